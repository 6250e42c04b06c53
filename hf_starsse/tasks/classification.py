"""What single-label classification families share: how member outputs combine, their metrics and label check."""

CLASS_PROBABILITIES = (
    "the mean of the members' softmax probabilities; the model returns it as logits `log(mean_k softmax(z_k))`, plus "
    "each member's logits in `member_logits`"
)
CLASSIFICATION_METRICS = ("accuracy", "nll", "ece", "brier")
MULTI_LABEL_METRICS = ("exact_match", "accuracy", "nll", "ece")  # accuracy, NLL and ECE of each label
REGRESSION_METRICS = ("rmse", "mae", "gaussian_nll", "coverage_90")  # NLL and coverage under the members' variance


def check_class_labels(dataset, column: str, model) -> None:
    """
    `TaskFamily.check_labels` of classifiers: the labels of `column` must be class ids of the model (-100, the
    ignore index, is allowed), unless it does regression (one output) or multi-label classification (float targets).
    """
    num_labels = getattr(getattr(model, "config", None), "num_labels", 1)
    if num_labels < 2 or model.config.problem_type not in (None, "single_label_classification"):
        return  # regression or multi-label: no class ids to check
    values = dataset.unique(column)
    outside = sorted(v for v in values if isinstance(v, int) and v != -100 and not 0 <= v < num_labels)
    if outside:
        raise ValueError(
            f"train_dataset column {column!r} holds labels {outside[:5]} outside the model's {num_labels} "
            "classes (0..num_labels-1). Map the labels to class ids, or load the model with the right num_labels."
        )
