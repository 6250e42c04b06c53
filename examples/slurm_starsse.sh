#!/usr/bin/env bash
# StarSSE on a SLURM cluster: member 0 first, then every branch (member 1..K-1) as one job of a job array, in
# parallel (StarSSE branches all start from member 0 and are independent), then the ensemble is evaluated, souped
# and pushed. All jobs share the run directory OUTPUT_DIR (a shared file system); re-submitting resumes.
#
#   MODEL=google-bert/bert-base-uncased DATASET=nyu-mll/glue DATA_ARGS="--dataset_config sst2 --text_column sentence" \
#   OUTPUT_DIR=$PWD/runs/sst2 NUM_MEMBERS=5 TEST_SPLIT=validation REPO_ID=me/sst2-starsse \
#   TRAIN_ARGS="--num_train_epochs 2 --learning_rate 2e-5 --cycle_epochs 1 --cycle_learning_rate 4e-5 --bf16 true" \
#   bash examples/slurm_starsse.sh
#
# submits three jobs chained with `sbatch --dependency=afterok`:
#   PHASE=first    member 0                            accelerate launch examples/$SCRIPT --members_to_train 0
#   PHASE=branch   array 1..K-1, one branch per task   ... --members_to_train $SLURM_ARRAY_TASK_ID
#   PHASE=publish  hf-starsse evaluate, soup, push (push only when REPO_ID is set; PUSH_ARGS="--dry_run" to check)
# PHASE=local runs the same phases one after the other on this machine, without SLURM (the branches in a loop).
#
# Settings (environment): MODEL, DATASET, OUTPUT_DIR (required); NUM_MEMBERS (5); SCRIPT (text_classification.py or
# image_classification.py); DATA_ARGS (dataset options, for training and evaluation); TRAIN_ARGS (training options);
# TEST_SPLIT (test); REPO_ID; PUSH_ARGS; ACCELERATE_ARGS (--config_file examples/accelerate_configs/single_gpu.yaml);
# SBATCH_ARGS (e.g. "--partition gpu --time 04:00:00"). The Hub token comes from HF_TOKEN or `hf auth login`.
#SBATCH --job-name=starsse
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus=1
#SBATCH --cpus-per-task=8
set -euo pipefail

: "${MODEL:?set MODEL}" "${DATASET:?set DATASET}" "${OUTPUT_DIR:?set OUTPUT_DIR}"
NUM_MEMBERS=${NUM_MEMBERS:-5}
TEST_SPLIT=${TEST_SPLIT:-test}
# SLURM runs a copy of the batch script, so the examples directory is resolved once, at submission.
export EXAMPLES_DIR=${EXAMPLES_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
ACCELERATE_ARGS=${ACCELERATE_ARGS:---config_file $EXAMPLES_DIR/accelerate_configs/single_gpu.yaml}
read -r -a DATA <<< "${DATA_ARGS:-}"
read -r -a TRAIN <<< "${TRAIN_ARGS:-}"

train_members() {
  # shellcheck disable=SC2086  # ACCELERATE_ARGS holds several options
  accelerate launch $ACCELERATE_ARGS "$EXAMPLES_DIR/${SCRIPT:-text_classification.py}" \
    --model_name_or_path "$MODEL" --dataset "$DATASET" "${DATA[@]}" --output_dir "$OUTPUT_DIR" \
    --num_members "$NUM_MEMBERS" --members_to_train "$@" "${TRAIN[@]}"
}

publish() {
  hf-starsse evaluate --run_dir "$OUTPUT_DIR" --dataset "$DATASET" "${DATA[@]}" --splits "$TEST_SPLIT"
  hf-starsse soup --run_dir "$OUTPUT_DIR" --output_dir "$OUTPUT_DIR-soup" --dataset "$DATASET" "${DATA[@]}" \
    --overwrite true
  if [[ -n "${REPO_ID:-}" ]]; then
    # shellcheck disable=SC2086  # PUSH_ARGS holds several options
    hf-starsse push --path "$OUTPUT_DIR" --repo_id "$REPO_ID" --soup_repo_id "$REPO_ID-soup" \
      --soup_path "$OUTPUT_DIR-soup" ${PUSH_ARGS:-}
  fi
}

case "${PHASE:-submit}" in
  submit)
    # shellcheck disable=SC2086  # SBATCH_ARGS holds several options
    first=$(sbatch --parsable ${SBATCH_ARGS:-} --export=ALL,PHASE=first "$0")
    branches=$(sbatch --parsable ${SBATCH_ARGS:-} --dependency="afterok:$first" --array="1-$((NUM_MEMBERS - 1))" \
      --export=ALL,PHASE=branch "$0")
    publish_job=$(sbatch --parsable ${SBATCH_ARGS:-} --dependency="afterok:$branches" --export=ALL,PHASE=publish "$0")
    echo "Submitted member 0 (job $first), branches 1-$((NUM_MEMBERS - 1)) (array $branches), publish ($publish_job)."
    ;;
  first) train_members 0 ;;
  branch) train_members "${SLURM_ARRAY_TASK_ID:?PHASE=branch runs as a job-array task (or set SLURM_ARRAY_TASK_ID)}" ;;
  publish) publish ;;
  local)
    train_members 0
    for member in $(seq 1 $((NUM_MEMBERS - 1))); do train_members "$member"; done
    publish
    ;;
  *) echo "slurm_starsse.sh: unknown PHASE=$PHASE; use submit, first, branch, publish or local." >&2; exit 2 ;;
esac
