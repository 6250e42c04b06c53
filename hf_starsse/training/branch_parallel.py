"""Branch-parallel StarSSE inside a `StarSSETrainer` (`BranchParallelMixin`): after member 0, each process of a
launch trains its own share of the branches on the full dataset, alone, then the processes meet in the run
directory (see `run/coordination.py`)."""

from contextlib import contextmanager

from transformers import PreTrainedModel
from transformers.trainer_utils import TrainOutput
from transformers.utils import logging

from ..errors import BranchesFailedError
from ..run.coordination import branch_share, main_process_only, single_process_state

logger = logging.get_logger(__name__)


class BranchParallelMixin:
    """The `StarSSETrainer` methods of `branch_parallel=True`; they rely on its `_train_members` and `_run`."""

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
        (under its file lock), so a crash of one process leaves the members of the others complete. A process that
        goes silent (killed, hung) for `ddp_timeout` seconds is named in an error instead of being waited for.
        """
        process, num_processes = self.accelerator.process_index, self.accelerator.num_processes
        share = branch_share(self.accelerator, branches)
        logger.warning(
            f"branch_parallel: process {process} of {num_processes} trains StarSSE branches {share} of {branches}, "
            "each on the full dataset without gradient synchronisation."
        )
        rendezvous = self._run.rendezvous
        main_process_only(rendezvous.clear)
        outputs, error = [], None
        with rendezvous.heartbeat(process, interval=min(5.0, ensemble_args.ddp_timeout / 4)):
            try:
                with self._single_process():
                    processes = {"mode": "branch_parallel", "process": process, "num_processes": num_processes}
                    outputs = self._train_members(ensemble_args, share, None, ignore_keys_for_eval, processes)
            except Exception as err:  # reported to the other processes below, so that none waits forever
                error = err
            rendezvous.report(process, {"members": share, "error": None if error is None else repr(error)})
        reports = rendezvous.wait(num_processes, timeout=ensemble_args.ddp_timeout)
        self.accelerator.wait_for_everyone()
        main_process_only(rendezvous.clear)
        if error is not None:
            raise error
        failed = [
            f"process {index} ({report['members']}): {report['error']}"
            for index, report in enumerate(reports)
            if report["error"]
        ]
        if failed:
            raise BranchesFailedError(
                f"Branch-parallel training failed on {'; '.join(failed)}. The other branches are complete; run again "
                "to train the missing ones."
            )
        return outputs

    @contextmanager
    def _single_process(self):
        """
        Let this process train on its own (see `single_process_state`): the Trainer sees one process, hence no DDP
        wrapper, no data sharding and no collective call, and the process saves, logs and checkpoints its own
        members. The launch's accelerator comes back afterwards.
        """
        launch = self.accelerator, self.gather_function
        model = self.accelerator.unwrap_model(self.model)
        self.accelerator.free_memory()  # drops the DDP wrapper of the members trained data-parallel
        if isinstance(model, PreTrainedModel):  # save_pretrained writes on torch.distributed rank 0 only
            model.should_save_on_this_rank = lambda is_main_process: is_main_process
        try:
            with single_process_state():
                self.create_accelerator_and_postprocess()
                self.model_wrapped = self.model
                yield
        finally:
            self.accelerator, self.gather_function = launch
            self.model_wrapped = self.model
            vars(model).pop("should_save_on_this_rank", None)
