# One process on this node: the data mix, then training.
run_forwarding USR1 "$PYTHON" -m emsweep sweep cell "$SWEEP_FILE" --cell "$CELL" --stages mix,train
finish_if_preempted training
