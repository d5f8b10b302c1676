# 1. The data mix: one process, on this node.
run_forwarding USR1 "$PYTHON" -m emsweep sweep cell "$SWEEP_FILE" --cell "$CELL" --stages mix
finish_if_preempted "the data mix"

# 2. Training on every GPU: one `accelerate launch` per node through srun (rendezvous as in alignment-handbook's
# launcher); accelerate starts one `emsweep train` process per GPU on the cell's recipe. torchrun passes
# SIGTERM/INT/HUP/QUIT to its workers; adding SIGUSR1 lets the checkpoint signal reach them too.
RECIPE={{ recipes_dir }}/$CELL.yaml
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-{{ gpus_per_node }}}
NUM_PROCESSES=$((SLURM_NNODES * GPUS_PER_NODE))
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
export MASTER_ADDR MASTER_PORT TORCHELASTIC_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
run_forwarding USR1 srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --cpus-per-task="$SLURM_CPUS_PER_TASK" \
    --kill-on-bad-exit=1 bash -c "exec \"$PYTHON\" -m accelerate.commands.launch {{ accelerate_config }} \
    --num_machines $SLURM_NNODES --num_processes $NUM_PROCESSES --machine_rank \$SLURM_NODEID \
    --main_process_ip $MASTER_ADDR --main_process_port $MASTER_PORT \
    -m emsweep train \"$RECIPE\""
finish_if_preempted training
