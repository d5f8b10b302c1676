# --- preemption and time limits ------------------------------------------------------------------------------
# Bash runs each step in the background and waits, so the traps fire at once instead of after the step ends.
REQUEUE={{ requeue }}  # slurm.requeue in the recipe: 1 = requeue this task after the signal, 0 = stop
PREEMPTED=0
CHILD=""
FORWARD=TERM
on_signal() {
    echo "[$(date '+%F %T')] emsweep: got SIG$1; passing SIG$FORWARD to the running step${CHILD:+ (pid $CHILD)}"
    if [ "$1" = "{{ signal_name }}" ]; then PREEMPTED=1; fi
    if [ -n "$CHILD" ]; then kill -s "$FORWARD" "$CHILD" 2>/dev/null || true; fi
}
trap 'on_signal {{ signal_name }}' {{ signal_name }}
trap 'on_signal TERM' TERM
run_forwarding() {  # run_forwarding SIGNAL CMD...: run CMD, forwarding our signals to it as SIGNAL
    FORWARD=$1; shift
    if [ "$PREEMPTED" = 1 ]; then STEP_RC=skipped; return 0; fi
    "$@" &
    CHILD=$!
    # a signal that came before CHILD was set found no step to pass on to: pass it on now
    if [ "$PREEMPTED" = 1 ]; then kill -s "$FORWARD" "$CHILD" 2>/dev/null || true; fi
    while kill -0 "$CHILD" 2>/dev/null; do
        wait "$CHILD" || true  # returns early when a trap fires: wait again until the step has exited
    done
    local rc=0
    wait "$CHILD" || rc=$?  # the step's own exit status (bash keeps it)
    CHILD=""
    STEP_RC=$rc
    if [ "$rc" != 0 ] && [ "$PREEMPTED" = 0 ]; then
        echo "[$(date '+%F %T')] emsweep: step failed with exit code $rc" >&2
        exit "$rc"
    fi
}
finish_if_preempted() {  # after a step: if we were signalled, requeue (unless the step had finished anyway)
    if [ "$PREEMPTED" = 1 ] && [ "$STEP_RC" != 0 ]; then
        if [ "$REQUEUE" = 1 ]; then
            echo "[$(date '+%F %T')] emsweep: $1 stopped on the signal (exit $STEP_RC); requeueing job $SLURM_JOB_ID to resume"
            scontrol requeue "$SLURM_JOB_ID"
            exit 0
        fi
        echo "[$(date '+%F %T')] emsweep: $1 stopped on the signal (exit $STEP_RC); requeue is off (slurm.requeue: false): rerun 'emsweep sweep run --executor slurm' to resume"
        exit "$STEP_RC"
    fi
}
