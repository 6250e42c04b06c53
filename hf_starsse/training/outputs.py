"""What a `StarSSETrainer` makes of its run directory: the ensemble, soups, an adopted first member, the Hub
upload (`RunOutputsMixin`, mixed into `StarSSETrainer`), and the output of `train()` over several members."""

import dataclasses
import json
import os
from functools import partial
from pathlib import Path

from huggingface_hub import HfApi
from transformers import PreTrainedModel
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import HubStrategy, TrainOutput
from transformers.utils import logging

from ..adapters.peft import is_peft_model
from ..ensemble import build_ensemble
from ..evaluation.calibration import calibrate_ensemble, check_calibration_split
from ..evaluation.heads import is_evaluated
from ..evaluation.run_evaluation import trainer_metrics
from ..hub.publish import push_ensemble_to_hub
from ..run.coordination import main_process_only, on_main_process
from ..run.directory import RunDirectory
from ..run.members import load_members
from ..soups.average import greedy_soup, uniform_soup
from ..storage.atomic_io import atomic_write_text
from ..storage.weights import weights_sha256
from .adapters import check_member_kind, save_member_config
from .arguments import StarSSETrainingArguments

logger = logging.get_logger(__name__)


class RunOutputsMixin:
    """
    The `StarSSETrainer` methods that turn its run directory into models: `save_ensemble`, `save_soup`,
    `adopt_member`, and `push_to_hub` of the ensemble (with the `init_hf_repo` check and a `training_args.bin`
    without `hub_token`). It relies on the trainer's `args`, `accelerator`, datasets and `_run_header`.
    """

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

        return main_process_only(save)

    def evaluate(self, eval_dataset=None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"):
        """
        `Trainer.evaluate`, unchanged: it evaluates `trainer.model`, which after `train()` is the last member trained,
        not the ensemble (`eval_accuracy` is one member's). [`evaluate_ensemble`] evaluates the ensemble, its soup and
        the members.
        """
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def evaluate_ensemble(self, eval_dataset=None, metric_key_prefix: str = "eval", soup: bool = True) -> dict:
        """
        Evaluate what the run trained, on `eval_dataset` (default: the trainer's): the ensemble of its complete
        members, their uniform soup and the members' mean, as Trainer-style metrics (`eval_ensemble_accuracy`,
        `eval_soup_accuracy`, `eval_member_mean_accuracy`, ... for accuracy, NLL, ECE and Brier score, and
        `eval_ensemble_size`; see [`trainer_metrics`]), logged like those of `evaluate()`. `evaluate()` itself stays
        the Trainer's: it evaluates `trainer.model`, the last member trained.

        Args:
            eval_dataset (`datasets.Dataset`, *optional*): Held-out data (default: `eval_dataset` of the trainer).
            metric_key_prefix (`str`, *optional*, defaults to `"eval"`): The prefix of the metric names.
            soup (`bool`, *optional*, defaults to `True`): Also build and evaluate the uniform soup (BatchNorm
                re-estimated on `train_dataset`).

        Returns:
            `dict[str, float]`: The metrics, on every process.
        """
        run = self._run_dir()
        metrics = on_main_process(partial(self._ensemble_metrics, run, eval_dataset, metric_key_prefix, soup))
        self.log(metrics)
        return metrics

    def _ensemble_metrics(self, source, eval_dataset, metric_key_prefix: str, soup: bool) -> dict:
        """The metrics of `trainer_metrics`; a dict of datasets (as `Trainer` takes) gives `<prefix>_<name>_...`."""
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if dataset is None:
            raise ValueError("evaluate_ensemble needs an eval_dataset: pass one, or give the trainer one.")
        options = dict(data_collator=self.data_collator, batch_size=self.args.per_device_eval_batch_size)
        options.update(train_dataset=self.train_dataset, device=self.args.device, soup=soup)
        if isinstance(dataset, dict):
            return {
                key: value
                for name, split in dataset.items()
                for key, value in trainer_metrics(source, split, metric_key_prefix=f"{metric_key_prefix}_{name}",
                                                  **options).items()
            }  # fmt: skip
        return trainer_metrics(source, dataset, metric_key_prefix=metric_key_prefix, **options)

    def _log_running_ensemble(self, member_dir: Path) -> None:
        """With an evaluation strategy (and an `eval_dataset`), log the ensemble of the members complete so far
        once a member is recorded (main process), into its `trainer_state.json` too: `log_history` and
        TensorBoard show the ensemble improving with its size."""
        if self.args.eval_strategy == "no" or self.eval_dataset is None or not self._is_ensemble():
            return
        if not is_evaluated(self.accelerator.unwrap_model(self.model)):
            return  # e.g. causal language models: their evaluation comes later
        complete = load_members(self._run_dir())  # the members so far (a run directory would warn of the others)
        self.log(self._ensemble_metrics(complete, None, "eval", soup=False))
        state = json.dumps(dataclasses.asdict(self.state), indent=2, sort_keys=True) + "\n"  # as save_to_json
        atomic_write_text(member_dir / TRAINER_STATE_NAME, state)  # the member is recorded: never a torn file

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

        return main_process_only(make_soup)

    def adopt_member(self, source: str | os.PathLike, index: int = 0) -> None:
        """
        Use an already trained model directory as member `index` (normally 0) of this run, so that StarSSE or SSE
        cycles branch from it without training it again: several runs with different cycle settings can share one
        first member (as `sweep_cycle_hyperparameters` does). A member the run already has complete is kept.

        Args:
            source (`str` or `os.PathLike`): A `save_pretrained` directory (e.g. `members/member-00` of another run).
            index (`int`, *optional*, defaults to 0): The member it becomes.
        """
        model = self.accelerator.unwrap_model(self.model)
        check_member_kind(model, source)
        state_file = Path(source) / TRAINER_STATE_NAME
        steps = json.loads(state_file.read_text())["global_step"] if state_file.is_file() else 0
        run = RunDirectory(self._run_dir())

        def adopt():
            run.claim(self._run_header(), overwrite=self.args.overwrite_output_dir)
            complete = run.complete_members()
            if index not in complete:
                run.import_member(index, source, self.args.seed + index, steps)
                member_dir = run.member_dir(index)
                if is_peft_model(model) and not (member_dir / "config.json").is_file():
                    save_member_config(model, member_dir)  # an adapter saved by PEFT alone: its label names
            elif complete[index]["sha256"] != weights_sha256(source):
                raise ValueError(
                    f"Member {index} of {run.path} differs from {source}; its branches were trained from another "
                    "model. Use a new output_dir (or overwrite_output_dir=True) to start from this one."
                )

        on_main_process(adopt)

    def _run_dir(self) -> str:
        if not isinstance(self.args, StarSSETrainingArguments):
            raise ValueError("Ensembles and soups need StarSSETrainingArguments (a run directory with members).")
        return str(self._run.path) if self._run is not None else self.args.output_dir  # while a member trains

    # ----- Hub ------------------------------------------------------------------------------------------------------

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


def combine_outputs(outputs: list[TrainOutput]) -> TrainOutput:
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
