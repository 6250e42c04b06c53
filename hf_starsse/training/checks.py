"""The settings a `StarSSETrainer` refuses before it trains an ensemble: each check names the problem and the fix."""

from transformers import EarlyStoppingCallback, PreTrainedModel, TrainerCallback

from ..adapters.peft import is_peft_model
from .plan import plan_member


def check_ensemble_setup(trainer) -> None:
    """
    Refuse what cannot train an ensemble (`num_members > 1`): an optimizer instance, an `lr` in
    `optimizer_cls_and_kwargs` that contradicts `learning_rate`, DeepSpeed or FSDP, a PEFT model that cannot be a
    member (see `check_peft_model`), `load_best_model_at_end` with cycles, early stopping with cycles, and Local DE
    without a way to re-initialise the head.

    Args:
        trainer (`StarSSETrainer`): The trainer, after `Trainer.__init__`.

    Raises:
        `ValueError`: naming the setting and what to do instead.
    """
    if trainer.optimizer is not None or trainer.lr_scheduler is not None:
        raise ValueError(
            "StarSSETrainer creates a new optimizer and schedule for every member, so it cannot use the "
            "optimizer instance given in `optimizers`. Pass `optimizer_cls_and_kwargs=(optimizer_class, kwargs)` "
            "instead, or set num_members=1."
        )
    given_lr = (trainer.optimizer_cls_and_kwargs or (None, {}))[1].get("lr")
    if given_lr is not None and given_lr != trainer.args.learning_rate:
        raise ValueError(
            f"optimizer_cls_and_kwargs sets lr={given_lr}, but learning_rate={trainer.args.learning_rate}: every "
            "member's peak learning rate comes from learning_rate (member 0) and cycle_learning_rate (later "
            "cycles). Set learning_rate, and leave lr out of the optimizer's kwargs."
        )
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        raise ValueError(
            "Ensembles with DeepSpeed or FSDP are not supported yet: member snapshots and branch starts need full "
            "state dicts. Train data-parallel (DDP), or one member per job with members_to_train."
        )
    model = trainer.accelerator.unwrap_model(trainer.model)
    if getattr(model, "_hf_peft_config_loaded", False):
        raise ValueError(
            "The model holds adapters added with transformers' add_adapter / load_adapter, which StarSSETrainer does "
            "not train as members: wrap the base model with peft.get_peft_model(model, config) instead."
        )
    if trainer.args.load_best_model_at_end and trainer.args.ensemble_method != "local_de":
        raise ValueError(
            "load_best_model_at_end=True would make a cycle member the best checkpoint of its cycle instead of "
            "the cycle's end, which is what SSE/StarSSE ensemble. Set it to False (or use local_de)."
        )
    check_callbacks(trainer.callback_handler.callbacks, trainer.args.ensemble_method)
    if trainer.args.ensemble_method == "local_de" and trainer.model_init is None:
        if not isinstance(model, PreTrainedModel) and not is_peft_model(model):
            raise ValueError(
                "ensemble_method='local_de' re-initialises the head of a transformers PreTrainedModel for every "
                f"member; {type(model).__name__} is not one. Pass model_init=... that builds a fresh model."
            )


def check_callbacks(callbacks: list[TrainerCallback], ensemble_method: str) -> None:
    """Early stopping would end a cycle before its schedule does, and the cycle's end is what SSE/StarSSE keep."""
    early = [callback for callback in callbacks if isinstance(callback, EarlyStoppingCallback)]
    if early and ensemble_method != "local_de":
        raise ValueError(
            f"EarlyStoppingCallback would end a {ensemble_method} cycle before its learning rate "
            "reaches zero, and the cycle's end is the member the ensemble needs. Remove the callback, or use "
            "ensemble_method='local_de' (independent fine-tunes: early stopping starts afresh for each member)."
        )


def check_parents(args, todo: list[int], complete: dict, run_path) -> None:
    """Each member to train starts from a parent that is complete or trained before it (`todo` is in order)."""
    for position, member in enumerate(todo):
        parent = plan_member(args, member).parent
        if parent is not None and parent not in complete and parent not in todo[:position]:
            raise ValueError(
                f"{args.ensemble_method} member {member} starts from member {parent}, which is not complete "
                f"in {run_path} (its manifest does not list it). Train member {parent} first, e.g. with "
                f"members_to_train=[{parent}], or include it in members_to_train."
            )
