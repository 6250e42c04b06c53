"""`StarSSETrainer`: a `transformers.Trainer` that trains a whole ensemble (Local DE, SSE or StarSSE) from one
pre-trained checkpoint into a resumable run directory."""

import copy
import inspect
import json
import math
import os
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, broadcast_object_list
from huggingface_hub import HfApi
from torch import nn
from transformers import PreTrainedModel, Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import HubStrategy, TrainOutput, enable_full_determinism, set_seed
from transformers.utils import logging

from . import __version__
from .calibration import calibrate_ensemble, check_calibration_split
from .data import check_train_dataset
from .ensemble import build_ensemble
from .hub import push_ensemble_to_hub
from .run_dir import RunDirectory, load_weights, weights_sha256
from .schedule import get_cycle_schedule
from .soups import greedy_soup, uniform_soup
from .training_args import StarSSETrainingArguments

logger = logging.get_logger(__name__)

OPTIMIZER_STATE_NAME = "optimizer_state.pt"


class StarSSETrainer(Trainer):
    """
    A drop-in [`~transformers.Trainer`] that trains an ensemble of `args.num_members` models from one pre-trained
    checkpoint. Member 0 is an ordinary fine-tune with the usual schedule. Members 1..K-1 are, by
    `args.ensemble_method`: `"starsse"` cosine cycles that each start from member 0; `"sse"` cycles that each start
    from the previous member; `"local_de"` independent fine-tunes of the pre-trained weights with a fresh head. Each
    member has its own seed (`args.seed + index`), so head initialisation and data order differ.

    Every finished member is saved with `save_pretrained` under `output_dir/members/member-NN/` and listed with the
    sha256 of its weights in `output_dir/ensemble.json`. Running `train()` again on the same `output_dir` skips
    complete members and resumes the member in progress from its last checkpoint.

    With plain [`~transformers.TrainingArguments`] (or `num_members=1`) it trains exactly like `Trainer`. The
    constructor takes the same arguments as `Trainer`.

    In a multi-process launch (`accelerate launch`, `torchrun`) every member is trained data-parallel, and the main
    process writes snapshots and the manifest while the others wait. With `branch_parallel=True` (StarSSE), member 0
    is trained data-parallel, then each process trains its own share of the branches on the full dataset. Separate
    jobs can share one `output_dir` with `members_to_train` (job arrays): writers lock each member and the manifest.

    Example:
    ```python
    from hf_starsse import StarSSETrainer, StarSSETrainingArguments

    args = StarSSETrainingArguments(output_dir="runs/demo", num_train_epochs=2, learning_rate=1e-2,
                                    ensemble_method="starsse", num_members=5, cycle_epochs=1.0,
                                    cycle_learning_rate=2e-2)
    trainer = StarSSETrainer(model=model, args=args, train_dataset=train_dataset)
    trainer.train()  # members 0..4 in runs/demo/members/
    ```
    """

    _member: int | None = None  # the member being trained; None outside ensemble training
    _run: RunDirectory | None = None  # the run directory, during ensemble training

    def __init__(self, *args, **kwargs):
        training_args = kwargs["args"] if "args" in kwargs else args[1] if len(args) > 1 else None
        if isinstance(training_args, StarSSETrainingArguments) and training_args.should_save:
            RunDirectory(training_args.output_dir).check_writable()  # before Trainer creates it
        super().__init__(*args, **kwargs)
        self._carried_optimizer_state: dict | None = None
        self._initial_state: dict[str, torch.Tensor] | None = None
        self._fresh_parameters: set[str] = set()
        scaler = getattr(self.accelerator, "scaler", None)
        self._initial_scaler_state = scaler.state_dict() if scaler is not None else None
        if isinstance(self.args, StarSSETrainingArguments) and self.args.num_members > 1:
            self._check_ensemble_setup()
            if self.args.ensemble_method == "local_de" and self.model_init is None:
                self._remember_pretrained_state()

    __init__.__signature__ = inspect.signature(Trainer.__init__)

    # ----- setup -----------------------------------------------------------------------------------------------

    def _check_ensemble_setup(self) -> None:
        if self.optimizer is not None or self.lr_scheduler is not None:
            raise ValueError(
                "StarSSETrainer creates a new optimizer and schedule for every member, so it cannot use the "
                "optimizer instance given in `optimizers`. Pass `optimizer_cls_and_kwargs=(optimizer_class, kwargs)` "
                "instead, or set num_members=1."
            )
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                "Ensembles with DeepSpeed or FSDP are not supported yet: member snapshots and branch starts need full "
                "state dicts. Train data-parallel (DDP), or one member per job with members_to_train."
            )
        if hasattr(self.model, "peft_config"):
            raise ValueError("PEFT models are not supported as ensemble members yet; merge the adapter first.")
        if self.args.load_best_model_at_end and self.args.ensemble_method != "local_de":
            raise ValueError(
                "load_best_model_at_end=True would make a cycle member the best checkpoint of its cycle instead of "
                "the cycle's end, which is what SSE/StarSSE ensemble. Set it to False (or use local_de)."
            )
        if self.args.ensemble_method == "local_de" and self.model_init is None:
            if not isinstance(self.accelerator.unwrap_model(self.model), PreTrainedModel):
                raise ValueError(
                    "ensemble_method='local_de' re-initialises the head of a transformers PreTrainedModel for every "
                    f"member; {type(self.model).__name__} is not one. Pass model_init=... that builds a fresh model."
                )

    def _remember_pretrained_state(self) -> None:
        """Keep the weights Local DE members start from, and the parameters that did not come from a checkpoint."""
        model = self.accelerator.unwrap_model(self.model)
        self._initial_state = {
            name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()
        }
        # transformers marks the parameters that from_pretrained loaded; the others (the new head) were initialised.
        self._fresh_parameters = {
            name for name, param in model.named_parameters() if not getattr(param, "_is_hf_initialized", False)
        }
        if len(self._fresh_parameters) == len(list(model.parameters())):
            logger.warning(
                "No parameter of the model was loaded by from_pretrained, so Local DE members are trained from "
                "scratch, each with its own initialisation."
            )
        elif not self._fresh_parameters:
            logger.warning(
                "Every parameter of the model was loaded from a checkpoint (no new head), so Local DE members differ "
                "only in their seed and data order."
            )

    # ----- the member loop -------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None):
        """
        Train every member listed by `args.members_to_train` (all by default) that is not complete yet. With plain
        `TrainingArguments` this is `Trainer.train`. With `args.branch_parallel` in a multi-process launch, the
        processes share the StarSSE branches and the model ends as the run's last member on every process.

        Args:
            resume_from_checkpoint (`str` or `bool`, *optional*):
                A checkpoint of the first member still to train (not used for parallel branches). Unfinished members
                resume from their last checkpoint anyway.
            trial (*optional*): Not supported for ensembles (hyperparameter search runs a plain `Trainer`).
            ignore_keys_for_eval (`list[str]`, *optional*): As in `Trainer.train`.

        Returns:
            [`~transformers.trainer_utils.TrainOutput`]: The member's output when one member was trained; otherwise
            the total optimizer steps, the step-weighted training loss and summed runtime of the members trained (by
            this process, for parallel branches).
        """
        if not isinstance(self.args, StarSSETrainingArguments):
            return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval)
        if trial is not None:
            raise ValueError(
                "StarSSETrainer does not run hyperparameter-search trials: tune the first member with a plain Trainer."
            )
        check_train_dataset(self.train_dataset, self.accelerator.unwrap_model(self.model), self.label_names)
        ensemble_args = self.args
        self._run = run = RunDirectory(ensemble_args.output_dir)
        todo = self._on_main_process(self._plan)
        branches = self._parallel_branches(todo)
        in_turn = [member for member in todo if member not in branches]
        processes = {"mode": "data_parallel", "num_processes": self.accelerator.num_processes}
        try:
            outputs = self._train_members(
                ensemble_args, in_turn, resume_from_checkpoint, ignore_keys_for_eval, processes
            )
            if branches:
                outputs += self._train_branches(ensemble_args, branches, ignore_keys_for_eval)
        finally:
            self.args, self._member, self._run = ensemble_args, None, None
        if not todo or branches:  # the model ends as the last member, as after training the members in turn
            load_weights(self.accelerator.unwrap_model(self.model), run.member_dir(ensemble_args.members()[-1]))
        self.state.log_history = self._member_logs(run, ensemble_args.members())
        return _combine_outputs(outputs)

    def _train_members(
        self, ensemble_args, members: list[int], resume_from_checkpoint, ignore_keys_for_eval, processes: dict
    ) -> list[TrainOutput]:
        """Train `members` one after another, each under its member lock (taken by the main process)."""
        outputs = []
        for member in members:
            checkpoint = resume_from_checkpoint if member == members[0] else None
            lock = self._main_process_only(lambda: self._run.lock_member(member))  # noqa: B023
            try:
                outputs.append(self._train_member(ensemble_args, member, checkpoint, ignore_keys_for_eval, processes))
            finally:
                if lock is not None:
                    lock.release()
        return outputs

    def _parallel_branches(self, todo: list[int]) -> list[int]:
        """The members of `todo` that processes train side by side (`branch_parallel`); the others go in turn."""
        if not self.args.branch_parallel:
            return []
        if self.accelerator.num_processes == 1:
            logger.warning("branch_parallel=True in a single process: the branches are trained one after another.")
            return []
        return [member for member in todo if member > 0]

    def _train_branches(self, ensemble_args, branches: list[int], ignore_keys_for_eval) -> list[TrainOutput]:
        """
        Give each process its share of `branches` to train on its own (full dataset, no gradient synchronisation),
        then wait until every process has finished its share. Each process records its own members in the manifest
        (under its file lock), so a crash of one process leaves the members of the others complete.
        """
        process, num_processes = self.accelerator.process_index, self.accelerator.num_processes
        with self.accelerator.split_between_processes(branches) as share:
            share = list(share)
        logger.warning(
            f"branch_parallel: process {process} of {num_processes} trains StarSSE branches {share} of {branches}, "
            "each on the full dataset without gradient synchronisation."
        )
        self._main_process_only(self._run.clear_process_reports)
        outputs, error = [], None
        try:
            with self._single_process():
                processes = {"mode": "branch_parallel", "process": process, "num_processes": num_processes}
                outputs = self._train_members(ensemble_args, share, None, ignore_keys_for_eval, processes)
        except Exception as err:  # reported to the other processes below, so that none waits forever
            error = err
        self._run.report_process(process, {"members": share, "error": None if error is None else repr(error)})
        reports = self._run.wait_for_reports(num_processes)
        self.accelerator.wait_for_everyone()
        self._main_process_only(self._run.clear_process_reports)
        if error is not None:
            raise error
        failed = [
            f"process {index} ({report['members']}): {report['error']}"
            for index, report in enumerate(reports)
            if report["error"]
        ]
        if failed:
            raise RuntimeError(
                f"Branch-parallel training failed on {'; '.join(failed)}. The other branches are complete; run again "
                "to train the missing ones."
            )
        return outputs

    @contextmanager
    def _single_process(self):
        """
        Let this process train on its own: accelerate (so the Trainer) sees one process, hence no DDP wrapper, no
        data sharding and no collective call, and the process saves, logs and checkpoints its own members. The
        launch's state and accelerator come back afterwards.
        """
        states = (PartialState._shared_state, AcceleratorState._shared_state)
        saved = [dict(state) for state in states]
        launch = self.accelerator, self.gather_function
        model = self.accelerator.unwrap_model(self.model)
        self.accelerator.free_memory()  # drops the DDP wrapper of the members trained data-parallel
        for state in states:
            state.update(distributed_type=DistributedType.NO, num_processes=1, process_index=0, local_process_index=0)
        if isinstance(model, PreTrainedModel):  # save_pretrained writes on torch.distributed rank 0 only
            model.should_save_on_this_rank = lambda is_main_process: is_main_process
        try:
            self.create_accelerator_and_postprocess()
            self.model_wrapped = self.model
            yield
        finally:
            for state, values in zip(states, saved):
                state.clear()
                state.update(values)
            self.accelerator, self.gather_function = launch
            self.model_wrapped = self.model
            vars(model).pop("should_save_on_this_rank", None)

    def _plan(self) -> list[int]:
        """Claim the run directory and list the members still to train (on the main process)."""
        self._run.claim(self._run_header(), overwrite=self.args.overwrite_output_dir)
        complete = self._run.complete_members()
        todo = [member for member in self.args.members() if member not in complete]
        self._check_parents(todo, complete)
        if len(todo) < len(self.args.members()):
            logger.info(f"Members {sorted(set(self.args.members()) - set(todo))} are complete; skipping them.")
        return todo

    def _on_main_process(self, fn: Callable):
        """Run `fn` on the main process only; every process gets its result, or raises the error it raised."""
        result, error = None, None
        if self.accelerator.is_main_process:
            try:
                result = fn()
            except Exception as err:  # re-raised on every process below, so that none waits forever
                error = err
        if self.accelerator.num_processes > 1:
            payload = [None if error else result, error]
            broadcast_object_list(payload, from_process=0)
            result = result if self.accelerator.is_main_process else payload[0]
            error = payload[1]
        if error is not None:
            raise error
        return result

    def _main_process_only(self, fn: Callable):
        """Run `fn` on the main process and return its result there (`None` elsewhere); errors reach every process."""
        result = []
        self._on_main_process(lambda: result.append(fn()))
        return result[0] if result else None

    def _train_member(
        self, ensemble_args, member, resume_from_checkpoint, ignore_keys_for_eval, processes: dict
    ) -> TrainOutput:
        run = self._run
        self.args = self._member_args(ensemble_args, member)
        self._member = member
        parent = self._parent(member)
        logger.info(
            f"Training member {member} of {ensemble_args.num_members} ({ensemble_args.ensemble_method}, "
            f"{'from the pre-trained weights' if parent is None else f'from member {parent}'}, seed {self.args.seed})"
        )
        if member > 0:  # member 0 keeps the seeding of a plain Trainer run
            enable_full_determinism(self.args.seed) if self.args.full_determinism else set_seed(self.args.seed)
            self.accelerator.dataloader_config.data_seed = self.args.data_seed
            self.optimizer, self.lr_scheduler = None, None
            self._reset_scaler()
        if self.model_init is None:
            self._init_member_weights(self.accelerator.unwrap_model(self.model))
        if resume_from_checkpoint in (None, True):
            last = run.last_checkpoint(member)
            if resume_from_checkpoint and last is None:
                raise ValueError(f"No valid checkpoint found for member {member} in {run.checkpoints_dir(member)}")
            resume_from_checkpoint = last
        output = super().train(
            resume_from_checkpoint=resume_from_checkpoint, ignore_keys_for_eval=ignore_keys_for_eval
        )
        self._save_member(member, processes if processes["num_processes"] > 1 else None)
        return output

    def _member_args(self, ensemble_args, member) -> StarSSETrainingArguments:
        args = copy.copy(ensemble_args)
        args.output_dir = str(self._run.checkpoints_dir(member))
        args.seed = ensemble_args.seed + member
        if ensemble_args.data_seed is not None:
            args.data_seed = ensemble_args.data_seed + member
        if self._cycle(member):
            args.learning_rate = ensemble_args.cycle_peak_learning_rate
            args.num_train_epochs, args.max_steps = ensemble_args.cycle_length()
        return args

    def _parent(self, member: int) -> int | None:
        """The member whose weights `member` starts from; `None` for the pre-trained weights."""
        if member == 0 or self.args.ensemble_method == "local_de":
            return None
        return 0 if self.args.ensemble_method == "starsse" else member - 1

    def _cycle(self, member: int) -> int:
        """Index of the learning-rate cycle that produces `member`: 0 is a fine-tune with the user's schedule."""
        return 0 if self.args.ensemble_method == "local_de" else member

    def _check_parents(self, todo: list[int], complete: dict) -> None:
        for position, member in enumerate(todo):
            parent = self._parent(member)
            if parent is not None and parent not in complete and parent not in todo[:position]:
                raise ValueError(
                    f"{self.args.ensemble_method} member {member} starts from member {parent}, which is not complete "
                    f"in {self._run.path} (its manifest does not list it). Train member {parent} first, e.g. with "
                    f"members_to_train=[{parent}], or include it in members_to_train."
                )

    def _init_member_weights(self, model: nn.Module) -> None:
        """Set the starting weights of the member being trained (member 0 starts from the model as given)."""
        member = self._member
        if not member:
            return
        parent = self._parent(member)
        if parent is None:
            if self._initial_state is not None:
                model.load_state_dict(self._initial_state)
                self._reinitialize_head(model)
            return
        parent_dir = self._run.member_dir(parent)
        load_weights(model, parent_dir)
        if not self.args.reset_optimizer_each_cycle:
            self._carried_optimizer_state = torch.load(parent_dir / OPTIMIZER_STATE_NAME, weights_only=True)

    @torch.no_grad()
    def _reinitialize_head(self, model: nn.Module) -> None:
        for prefix, module in model.named_modules():
            names = {f"{prefix}.{name}" if prefix else name for name, _ in module.named_parameters(recurse=False)}
            if names & self._fresh_parameters:
                model._init_weights(module)

    def _reset_scaler(self) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and self.args.reset_optimizer_each_cycle:
            scaler.load_state_dict(self._initial_scaler_state)

    def _save_member(self, member: int, processes: dict | None) -> None:
        member_dir = self._run.member_dir(member)
        self.save_model(str(member_dir), _internal_call=True)
        optimizer_state = None
        if not self.args.reset_optimizer_each_cycle and self.args.ensemble_method != "local_de":
            optimizer_state = self.optimizer.state_dict()

        def record():
            self.state.save_to_json(str(member_dir / TRAINER_STATE_NAME))
            if optimizer_state is not None:
                torch.save(optimizer_state, member_dir / OPTIMIZER_STATE_NAME)
            self._run.record_member(member, self._parent(member), self.args.seed, self.state.global_step, processes)

        self._on_main_process(record)

    def _run_header(self) -> dict:
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        return {
            "library": "hf_starsse",
            "library_version": __version__,
            "ensemble_method": self.args.ensemble_method,
            "num_members": self.args.num_members,
            "base_model": _model_id(getattr(config, "_name_or_path", None)),
            "hyperparameters": self.args.run_hyperparameters(),
        }

    @staticmethod
    def _member_logs(run: RunDirectory, members: list[int]) -> list[dict]:
        logs = []
        for member in members:
            state_file = run.member_dir(member) / TRAINER_STATE_NAME
            if state_file.is_file():
                logs.extend(json.loads(state_file.read_text())["log_history"])
        return logs

    # ----- ensembles and soups of the run ----------------------------------------------------------------------

    def save_ensemble(
        self, output_dir: str, members: list[int] | None = None, overwrite: bool = False, calibrate_on=None
    ) -> PreTrainedModel | None:
        """
        Save the ensemble of this run's complete members as one model directory (see [`build_ensemble`]), loadable
        with `AutoModelFor...from_pretrained` and `pipeline`.

        Args:
            output_dir (`str`): Where to save it.
            members (`list[int]`, *optional*): Positions of the members to include (default: all complete ones).
            overwrite (`bool`, *optional*, defaults to `False`): Replace a non-empty `output_dir`.
            calibrate_on (`datasets.Dataset`, *optional*): A held-out split (e.g. `eval_dataset`, never the test
                split): fit the pooled temperature on it and save it with the ensemble (see [`calibrate_ensemble`]).

        Returns:
            The ensemble model on the main process, `None` on the others.
        """
        if calibrate_on is not None:
            check_calibration_split(calibrate_on)  # before building anything
        options = dict(data_collator=self.data_collator, batch_size=self.args.per_device_eval_batch_size)

        def save() -> PreTrainedModel:
            model = build_ensemble(self._run_dir(), output_dir, members, overwrite=overwrite)
            return model if calibrate_on is None else calibrate_ensemble(output_dir, calibrate_on, **options)

        return self._main_process_only(save)

    def save_soup(
        self, output_dir: str, method: str = "uniform", num_batches: int | None = None, overwrite: bool = False
    ) -> PreTrainedModel | None:
        """
        Save a soup of this run's complete members: a plain checkpoint of the base architecture. BatchNorm statistics
        are re-estimated on `train_dataset`.

        Args:
            output_dir (`str`): Where to save it.
            method (`str`, *optional*, defaults to `"uniform"`): `"uniform"` averages every member; `"greedy"` adds
                members in order of `eval_dataset` accuracy while it does not drop.
            num_batches (`int`, *optional*): Limit the BatchNorm pass over `train_dataset` to this many batches.
            overwrite (`bool`, *optional*, defaults to `False`): Replace a non-empty `output_dir`.

        Returns:
            The soup on the main process, `None` on the others.
        """
        if method not in ("uniform", "greedy"):
            raise ValueError(f"method={method!r} is unknown; use 'uniform' or 'greedy'.")
        if method == "greedy" and self.eval_dataset is None:
            raise ValueError("A greedy soup picks members on held-out data: give the trainer an eval_dataset.")
        options = dict(
            train_dataset=self.train_dataset,
            data_collator=self.data_collator,
            batch_size=self.args.per_device_eval_batch_size,
            num_batches=num_batches,
            device=self.args.device,
            overwrite=overwrite,
        )

        def make_soup() -> PreTrainedModel:
            if method == "uniform":
                return uniform_soup(self._run_dir(), output_dir, **options)
            return greedy_soup(self._run_dir(), self.eval_dataset, out_dir=output_dir, **options)[0]

        return self._main_process_only(make_soup)

    def adopt_member(self, source: str | os.PathLike, index: int = 0) -> None:
        """
        Use an already trained model directory as member `index` (normally 0) of this run, so that StarSSE or SSE
        cycles branch from it without training it again: several runs with different cycle settings can share one
        first member (as `sweep_cycle_hyperparameters` does). A member the run already has complete is kept.

        Args:
            source (`str` or `os.PathLike`): A `save_pretrained` directory (e.g. `members/member-00` of another run).
            index (`int`, *optional*, defaults to 0): The member it becomes.
        """
        state_file = Path(source) / TRAINER_STATE_NAME
        steps = json.loads(state_file.read_text())["global_step"] if state_file.is_file() else 0
        run = RunDirectory(self._run_dir())

        def adopt():
            run.claim(self._run_header(), overwrite=self.args.overwrite_output_dir)
            complete = run.complete_members()
            if index not in complete:
                run.import_member(index, source, self.args.seed + index, steps)
            elif complete[index]["sha256"] != weights_sha256(source):
                raise ValueError(
                    f"Member {index} of {run.path} differs from {source}; its branches were trained from another "
                    "model. Use a new output_dir (or overwrite_output_dir=True) to start from this one."
                )

        self._on_main_process(adopt)

    def _run_dir(self) -> str:
        if not isinstance(self.args, StarSSETrainingArguments):
            raise ValueError("Ensembles and soups need StarSSETrainingArguments (a run directory with members).")
        return self.args.output_dir

    # ----- Trainer extension points ----------------------------------------------------------------------------

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        if self._is_ensemble() and self.args.push_to_hub and self.args.hub_strategy != HubStrategy.END:
            raise ValueError(
                f"push_to_hub=True with hub_strategy={self.args.hub_strategy.value!r} would push every member's "
                "checkpoints to one repository. Set hub_strategy='end' (the repository is created now and "
                "trainer.push_to_hub() publishes the ensemble after training), or push_to_hub=False."
            )
        super().init_hf_repo(token, private)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """As `Trainer._save`, but the `training_args.bin` pickle it writes never holds `hub_token`."""
        token, self.args.hub_token = self.args.hub_token, None
        try:
            super()._save(output_dir, state_dict)
        finally:
            self.args.hub_token = token

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs,
    ):
        """
        Upload the ensemble of the run's complete members (model card, manifest and evaluation tables included, see
        [`push_ensemble_to_hub`]) to `args.hub_model_id` (default: the name of `output_dir`). With plain
        `TrainingArguments` or `num_members=1` this is `Trainer.push_to_hub`.

        Args:
            commit_message (`str`, *optional*, defaults to `"End of training"`): Commit message.
            blocking (`bool`, *optional*, defaults to `True`): Wait for the upload; `False` returns a `Future`.
            token (`str`, *optional*): Hub token (default: `args.hub_token`, then `HF_TOKEN` or the stored login).
            revision (`str`, *optional*): Branch to commit to (default: `args.hub_revision`, then `main`).
            private (`bool`, *optional*): Visibility of a new repository (default: `args.hub_private_repo`).
            kwargs (*optional*): `Trainer.create_model_card` options; ensembles have their own card, so they are
                ignored (with a warning).

        Returns:
            The `CommitInfo` of the upload (`None` on other processes), or a `Future` of it when `blocking=False`.
        """
        if not self._is_ensemble():
            return super().push_to_hub(commit_message, blocking, token, revision, private, **kwargs)
        if kwargs:
            logger.warning(f"The ensemble's model card is generated by hf_starsse; ignoring {sorted(kwargs)}.")
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if not self.is_world_process_zero():
            return None
        push = partial(
            push_ensemble_to_hub,
            self.args.output_dir,
            self.hub_model_id or self.args.hub_model_id or Path(self.args.output_dir).absolute().name,
            private=self.args.hub_private_repo if private is None else private,
            revision=revision or self.args.hub_revision,
            commit_message=commit_message,
            token=token or self.args.hub_token,
        )
        if not blocking:
            return HfApi().run_as_future(lambda: push()[0].commit)
        return push()[0].commit

    def _is_ensemble(self) -> bool:
        return isinstance(self.args, StarSSETrainingArguments) and self.args.num_members > 1

    def call_model_init(self, trial=None) -> nn.Module:
        model = super().call_model_init(trial)
        if self._member is not None:
            self._init_member_weights(model)
        return model

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self._carried_optimizer_state is not None:
            state = optimizer.state_dict()
            state["state"] = self._carried_optimizer_state["state"]
            optimizer.load_state_dict(state)
            self._carried_optimizer_state = None
        return optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        if self.lr_scheduler is None and self._member is not None and self._cycle(self._member):
            warmup = min(math.ceil(self.args.cycle_warmup_ratio * num_training_steps), num_training_steps - 1)
            self.lr_scheduler = get_cycle_schedule(optimizer or self.optimizer, num_training_steps, warmup)
            self._created_lr_scheduler = True  # as Trainer.create_scheduler: recreated by the next train()
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._member is not None:
            logs.update(member=self._member, cycle=self._cycle(self._member))
        super().log(logs, start_time)


def _model_id(name_or_path: str | None) -> str | None:
    """A Hub id as is; a local directory as an absolute path (so runs resume from any working directory)."""
    return os.path.abspath(name_or_path) if name_or_path and os.path.isdir(name_or_path) else name_or_path or None


def _combine_outputs(outputs: list[TrainOutput]) -> TrainOutput:
    """One member's output as is; for several, total steps, step-weighted loss and summed runtime and flos."""
    if len(outputs) == 1:
        return outputs[0]
    steps = sum(output.global_step for output in outputs)
    loss = sum(output.training_loss * output.global_step for output in outputs) / max(1, steps)
    metrics = {
        "train_runtime": sum(output.metrics.get("train_runtime", 0.0) for output in outputs),
        "total_flos": sum(output.metrics.get("total_flos", 0.0) for output in outputs),
        "train_loss": loss,
        "train_members": len(outputs),
    }
    return TrainOutput(steps, loss, metrics)
