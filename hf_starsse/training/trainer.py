"""`StarSSETrainer`: a `transformers.Trainer` that trains a whole ensemble (Local DE, SSE or StarSSE) from one
pre-trained checkpoint into a resumable run directory; `StarSSETrainerMixin` does the same for a Trainer subclass."""

import copy
import inspect
import math
import os

import torch
from torch import nn
from transformers import Trainer
from transformers.integrations import TensorBoardCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import TrainOutput, enable_full_determinism, set_seed
from transformers.utils import logging

from ..adapters.peft import is_peft_model
from ..run.coordination import main_process_only, on_main_process
from ..run.directory import RunDirectory
from ..tasks.checks import check_train_dataset
from .adapters import (
    FreshAdapter,
    check_peft_model,
    check_same_adapter,
    hold_base_batchnorm,
    load_member_weights,
    save_member_config,
)
from .arguments import StarSSETrainingArguments, given_training_args
from .branch_parallel import BranchParallelMixin
from .checks import check_callbacks, check_ensemble_setup, check_parents
from .outputs import RunOutputsMixin, combine_outputs
from .plan import plan_member
from .run_identity import run_header
from .schedule import get_cycle_schedule, set_peak_learning_rate

logger = logging.get_logger(__name__)

OPTIMIZER_STATE_NAME = "optimizer_state.pt"


class StarSSETrainerMixin(RunOutputsMixin, BranchParallelMixin):
    """
    What makes a `transformers.Trainer` class train an ensemble into a run directory (see [`StarSSETrainer`]): put
    it before the trainer class among the bases, as `StarSSETrainer(StarSSETrainerMixin, Trainer)` and
    `StarSSESFTTrainer(StarSSETrainerMixin, SFTTrainer)` (`training/sft.py`) do.
    """

    _member: int | None = None  # the member being trained; None outside ensemble training
    _run: RunDirectory | None = None  # the run directory, during ensemble training

    def __init__(self, *args, **kwargs):
        training_args = given_training_args(args, kwargs)
        if isinstance(training_args, StarSSETrainingArguments) and training_args.should_save:
            RunDirectory(training_args.output_dir).check_writable()  # before Trainer creates it
        super().__init__(*args, **kwargs)
        self._carried_optimizer_state: dict | None = None
        self._initial_state: dict[str, torch.Tensor] | None = None
        self._fresh_parameters: set[str] = set()
        self._fresh_adapter: FreshAdapter | None = None
        self._batchnorm_hooks: list = []
        self._initial_scaler_state: dict | None = None
        self._callback_states: dict[int, tuple[ExportableState, dict]] = {}
        self._tensorboard_dirs: dict[TensorBoardCallback, str] = {}
        model = self.accelerator.unwrap_model(self.model)
        if isinstance(self.args, StarSSETrainingArguments) and is_peft_model(model):
            check_peft_model(model, self.args.ensemble_method, self.model_init is not None)
        if self._is_ensemble():
            check_ensemble_setup(self)
            if self.args.ensemble_method == "local_de" and self.model_init is None:
                self._remember_pretrained_state()

    # ----- setup -----------------------------------------------------------------------------------------------

    def _remember_pretrained_state(self) -> None:
        """Keep the weights Local DE members start from, and the parameters that did not come from a checkpoint (for
        a PEFT model: the adapter as given, see `FreshAdapter`; the frozen base stays in place)."""
        model = self.accelerator.unwrap_model(self.model)
        if is_peft_model(model):
            self._fresh_adapter = FreshAdapter(model)
            return
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

        Every member starts with the state a fresh `Trainer` would have: callbacks that keep state between calls
        (transformers' `ExportableState` callbacks, e.g. `EarlyStoppingCallback` with Local DE) are reset, TensorBoard
        writes to its own `member-NN` sub-directory, and the AMP loss scale is reset unless the member inherits its
        parent's optimizer state (`reset_optimizer_each_cycle=False`), which carries the parent's loss scale too.

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
        if self._is_ensemble():
            check_callbacks(self.callback_handler.callbacks, self.args.ensemble_method)  # added since __init__?
        model = self.accelerator.unwrap_model(self.model)
        check_train_dataset(self.train_dataset, model, self.label_names, self.data_collator)
        ensemble_args = self.args
        self._run = run = RunDirectory(ensemble_args.output_dir)
        self._remember_start_states(ensemble_args)
        todo = on_main_process(self._plan)
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
            self.accelerator.dataloader_config.data_seed = ensemble_args.data_seed
        if not todo or branches:  # the model ends as the last member, as after training the members in turn
            load_member_weights(self.accelerator.unwrap_model(self.model), run.member_dir(ensemble_args.members()[-1]))
        self.state.log_history = run.member_logs(ensemble_args.members())
        return combine_outputs(outputs)

    def _remember_start_states(self, ensemble_args: StarSSETrainingArguments) -> None:
        """What each member resets to: the stateful callbacks' state, the loss scale, TensorBoard's log directory."""
        for callback in self.callback_handler.callbacks:  # remembered once: later calls reset to the same
            if isinstance(callback, ExportableState) and id(callback) not in self._callback_states:
                self._callback_states[id(callback)] = (callback, copy.deepcopy(callback.state()["attributes"]))
            if isinstance(callback, TensorBoardCallback) and callback not in self._tensorboard_dirs:
                self._tensorboard_dirs[callback] = callback.logging_dir or os.path.join(
                    ensemble_args.output_dir, "runs"
                )
        scaler = getattr(self.accelerator, "scaler", None)
        if self._initial_scaler_state is None and scaler is not None:
            self._initial_scaler_state = scaler.state_dict()

    def _train_members(
        self, ensemble_args, members: list[int], resume_from_checkpoint, ignore_keys_for_eval, processes: dict
    ) -> list[TrainOutput]:
        """Train `members` one after another, each under its member lock (taken by the main process)."""
        outputs = []
        for member in members:
            checkpoint = resume_from_checkpoint if member == members[0] else None
            lock = main_process_only(lambda: self._run.lock_member(member))  # noqa: B023
            try:
                outputs.append(self._train_member(ensemble_args, member, checkpoint, ignore_keys_for_eval, processes))
            finally:
                if lock is not None:
                    lock.release()
        return outputs

    def _plan(self) -> list[int]:
        """Claim the run directory and list the members still to train (on the main process)."""
        self._run.claim(self._run_header(), overwrite=self.args.overwrite_output_dir)
        complete = self._run.complete_members()
        if not self.args.keep_member_checkpoints and self._run.remove_checkpoints(sorted(complete)):
            logger.info("Deleted the Trainer checkpoints that recorded members had left (a run stopped in between).")
        todo = [member for member in self.args.members() if member not in complete]
        check_parents(self.args, todo, complete, self._run.path)
        if len(todo) < len(self.args.members()):
            logger.info(f"Members {sorted(set(self.args.members()) - set(todo))} are complete; skipping them.")
        return todo

    def _train_member(
        self, ensemble_args, member, resume_from_checkpoint, ignore_keys_for_eval, processes: dict
    ) -> TrainOutput:
        run, plan = self._run, plan_member(ensemble_args, member)
        self.args = self._member_args(ensemble_args, plan)
        self._member = member
        logger.info(
            f"Training member {member} of {ensemble_args.num_members} ({ensemble_args.ensemble_method}, "
            f"{'from the pre-trained weights' if plan.parent is None else f'from member {plan.parent}'}, "
            f"seed {plan.seed})"
        )
        if member > 0:  # member 0 keeps the seeding of a plain Trainer run
            enable_full_determinism(plan.seed) if self.args.full_determinism else set_seed(plan.seed)
            self.accelerator.dataloader_config.data_seed = plan.data_seed
            self.optimizer, self.lr_scheduler = None, None
        if self.model_init is None:
            self._init_member_weights(self.accelerator.unwrap_model(self.model))
        self._reset_member_state(member)
        if resume_from_checkpoint in (None, True):
            last = run.last_checkpoint(member)
            if resume_from_checkpoint and last is None:
                raise ValueError(f"No valid checkpoint found for member {member} in {run.checkpoints_dir(member)}")
            resume_from_checkpoint = last
        if self.model_init is None:
            self._hold_base_batchnorm(self.accelerator.unwrap_model(self.model))
        try:
            output = super().train(
                resume_from_checkpoint=resume_from_checkpoint, ignore_keys_for_eval=ignore_keys_for_eval
            )
        finally:
            for hook in self._batchnorm_hooks:
                hook.remove()
            self._batchnorm_hooks = []
        self._save_member(member, processes if processes["num_processes"] > 1 else None)
        return output

    def _member_args(self, ensemble_args, plan) -> StarSSETrainingArguments:
        args = copy.copy(ensemble_args)
        args.output_dir = str(self._run.checkpoints_dir(plan.index))
        args.seed, args.data_seed, args.learning_rate = plan.seed, plan.data_seed, plan.peak_learning_rate
        args.num_train_epochs, args.max_steps = plan.num_train_epochs, plan.max_steps
        return args

    def _reset_member_state(self, member: int) -> None:
        """Give the member the callback states, loss scale and TensorBoard directory of a fresh run (see `train`)."""
        for callback, attributes in self._callback_states.values():
            for name, value in copy.deepcopy(attributes).items():
                setattr(callback, name, value)
        for callback, base in self._tensorboard_dirs.items():
            callback.logging_dir = os.path.join(base, f"member-{member:02d}")
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and self._initial_scaler_state is not None:
            scaler.load_state_dict(self._initial_scaler_state)  # a carried one replaces it in create_optimizer

    def _hold_base_batchnorm(self, model: nn.Module) -> None:
        """A PEFT model's frozen base keeps its BatchNorm statistics while a member trains (`hold_base_batchnorm`)."""
        if is_peft_model(model):
            self._batchnorm_hooks = hold_base_batchnorm(model)

    def _init_member_weights(self, model: nn.Module) -> None:
        """Set the starting weights of the member being trained (member 0 starts from the model as given)."""
        member = self._member
        if not member:
            return
        plan = plan_member(self.args, member)
        if plan.parent is None:
            if self._fresh_adapter is not None:
                self._fresh_adapter.apply(model)
            elif self._initial_state is not None:
                model.load_state_dict(self._initial_state)
                self._reinitialize_head(model)
            return
        parent_dir = self._run.member_dir(plan.parent)
        load_member_weights(model, parent_dir)
        if not plan.fresh_optimizer:
            self._carried_optimizer_state = torch.load(parent_dir / OPTIMIZER_STATE_NAME, weights_only=True)

    @torch.no_grad()
    def _reinitialize_head(self, model: nn.Module) -> None:
        for prefix, module in model.named_modules():
            names = {f"{prefix}.{name}" if prefix else name for name, _ in module.named_parameters(recurse=False)}
            if names & self._fresh_parameters:
                model._init_weights(module)

    def _save_member(self, member: int, processes: dict | None) -> None:
        member_dir, model = self._run.member_dir(member), self.accelerator.unwrap_model(self.model)
        self.save_model(str(member_dir), _internal_call=True)
        optimizer_state = None
        if not self.args.reset_optimizer_each_cycle and self.args.ensemble_method != "local_de":
            optimizer_state = self.optimizer.state_dict()
            scaler = getattr(self.accelerator, "scaler", None)
            if scaler is not None:  # the loss scale travels with the optimizer state it belongs to
                optimizer_state["grad_scaler"] = scaler.state_dict()
        parent, seed = plan_member(self.args, member).parent, self.args.seed

        def record():
            self.state.save_to_json(str(member_dir / TRAINER_STATE_NAME))
            if is_peft_model(model):
                save_member_config(model, member_dir)
            if optimizer_state is not None:
                torch.save(optimizer_state, member_dir / OPTIMIZER_STATE_NAME)
            self._run.record_member(member, parent, seed, self.state.global_step, processes)
            if not self.args.keep_member_checkpoints:  # after the durable record: a kill here is cleaned up later
                self._run.remove_checkpoints([member])
            self._log_running_ensemble(member_dir)

        on_main_process(record)

    def _run_header(self) -> dict:
        return run_header(self.args, self.accelerator.unwrap_model(self.model), self.train_dataset)

    # ----- Trainer extension points ----------------------------------------------------------------------------

    def call_model_init(self, trial=None) -> nn.Module:
        model = super().call_model_init(trial)
        if self._member is not None:
            if is_peft_model(model):
                check_same_adapter(model, self._run.read_manifest()["adapter"], self._member)
            self._init_member_weights(model)
            self._hold_base_batchnorm(model)
        return model

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self._carried_optimizer_state is not None:
            state = optimizer.state_dict()
            state["state"] = self._carried_optimizer_state["state"]
            optimizer.load_state_dict(state)
            scaler = getattr(self.accelerator, "scaler", None)
            if scaler is not None and "grad_scaler" in self._carried_optimizer_state:
                scaler.load_state_dict(self._carried_optimizer_state["grad_scaler"])
            self._carried_optimizer_state = None
        return optimizer

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        if self.lr_scheduler is None and self._member is not None and self._is_ensemble():
            self._set_peak_learning_rate(optimizer or self.optimizer)
        if self.lr_scheduler is None and self._member is not None and plan_member(self.args, self._member).cycle:
            warmup = min(math.ceil(self.args.cycle_warmup_ratio * num_training_steps), num_training_steps - 1)
            self.lr_scheduler = get_cycle_schedule(optimizer or self.optimizer, num_training_steps, warmup)
            self._created_lr_scheduler = True  # as Trainer.create_scheduler: recreated by the next train()
            return self.lr_scheduler
        return super().create_scheduler(num_training_steps, optimizer)

    def _set_peak_learning_rate(self, optimizer: torch.optim.Optimizer) -> None:
        """Make the member's schedule peak at its planned learning rate whatever built the optimizer (see
        `set_peak_learning_rate`); a first member or Local DE member built with another one gets a warning."""
        plan = plan_member(self.args, self._member)
        built = set_peak_learning_rate(optimizer, plan.peak_learning_rate)
        if built is not None and not plan.cycle:
            logger.warning(
                f"The optimizer of member {self._member} was built with learning rate {built}; it trains with "
                f"learning_rate={plan.peak_learning_rate} like every member of its kind (set learning_rate instead)."
            )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._member is not None:
            logs.update(member=self._member, cycle=plan_member(self.args, self._member).cycle)
        super().log(logs, start_time)


class StarSSETrainer(StarSSETrainerMixin, Trainer):
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
    constructor takes the same arguments as `Trainer`. A `peft` model (e.g. `get_peft_model(base, LoraConfig(...))`)
    trains adapter members over its frozen base (see `training/adapters.py`): each member directory holds an adapter.

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

    def __init__(self, *args, **kwargs):  # Trainer's signature, for help() and IDEs
        super().__init__(*args, **kwargs)

    __init__.__signature__ = inspect.signature(Trainer.__init__)
