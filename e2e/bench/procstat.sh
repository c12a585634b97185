# Process statistics from /proc for the benchmark scripts (sourced by sidecar.sh and context.sh).

proc_tree() { # PID -> the pid and all its descendants
    local child
    echo "$1"
    for child in $(pgrep -P "$1" || true); do proc_tree "$child"; done
}
cpu_ticks() { # PIDS... -> utime+stime summed, in clock ticks
    local total=0 pid f=()
    for pid in "$@"; do
        # Fields after the ")" of comm: utime and stime are overall fields 14 and 15.
        read -ra f < <(sed 's/.*) //' "/proc/$pid/stat")
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}
status_kb() { # FIELD PIDS... -> that /proc/PID/status field (VmRSS, VmHWM, ...) summed, in kB
    local field=$1 total=0 pid v
    shift
    for pid in "$@"; do
        v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/status")
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
TICKS=$(getconf CLK_TCK)
