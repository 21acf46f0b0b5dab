#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (localhost only), from Debian's packages, for trying and
# testing the workflow's SLURM profile. Run as root:
#   apt-get update && apt-get install -y slurm-wlm slurmdbd munge mariadb-server   # once (Debian 12: SLURM 22.05)
#   bash scripts/slurm_local.sh start      # munged, MariaDB, slurmdbd, slurmctld, slurmd
#   bash scripts/slurm_local.sh status     # the daemons, `sinfo` and `squeue`
#   bash scripts/slurm_local.sh stop       # cancels every job, stops every daemon it started, checks none is left
# One node holds this machine's cores and memory (`slurmd -C`); partitions `cpu` (default) and `gpu` both
# hold it (no GRES: GPU jobs with --gpus are refused). Accounting goes through slurmdbd into a private
# MariaDB, so `sacct` answers as on a real cluster. Everything (config, state, logs, database, munge key
# and socket) lives in one folder, $PAMM_SLURM_DIR (default /tmp/pamm-slurm); the system's own munged or
# MariaDB, if any, are left alone. Only /etc/slurm/slurm.conf is touched: a symlink to this folder's
# slurm.conf while the cluster runs (refused if that file belongs to another cluster), because commands
# inside jobs find the config only there (snakemake-executor-plugin-slurm-jobstep 0.6.1 drops SLURM_CONF
# from the environment of its `srun`). Every connection goes to 127.0.0.1 (MariaDB and slurmd listen only
# there; slurmctld and slurmdbd, which cannot be told so, on every interface), on these ports:
#   PAMM_SLURM_CTLD_PORT (6817)  PAMM_SLURM_SLURMD_PORT (6818)  PAMM_SLURM_DBD_PORT (6819)  PAMM_SLURM_DB_PORT (6820)
set -euo pipefail

DIR="${PAMM_SLURM_DIR:-/tmp/pamm-slurm}"
CTLD_PORT="${PAMM_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${PAMM_SLURM_SLURMD_PORT:-6818}"
DBD_PORT="${PAMM_SLURM_DBD_PORT:-6819}"
DB_PORT="${PAMM_SLURM_DB_PORT:-6820}"
CLUSTER="${PAMM_SLURM_CLUSTER:-pamm}"
NODE="$(hostname -s)"
ETC="$DIR/etc" RUN="$DIR/run" LOG="$DIR/log" STATE="$DIR/state"
SYSTEM_CONF=/etc/slurm/slurm.conf   # where SLURM commands look when SLURM_CONF is unset
export SLURM_CONF="$ETC/slurm.conf"
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # in start order

fail() { echo "slurm_local: $*" >&2; exit 1; }
say() { echo "slurm_local: $*"; }

pid_of() {  # the pid of a daemon this script started, if it is still alive
    local file="$RUN/$1.pid" pid
    [ -s "$file" ] || return 1
    pid="$(cat "$file")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

log_tail() {  # a daemon's own log file, else what it printed
    local file="$LOG/$1.log"
    [ -s "$file" ] || file="$LOG/$1.stdout"
    [ -s "$file" ] && tail -n 15 "$file" | sed 's/^/    /' >&2 || true
}

# Start one daemon in the foreground mode of its own, detached from this shell (its output goes to its log).
launch() {
    local name="$1"; shift
    setsid "$@" </dev/null >>"$LOG/$name.stdout" 2>&1 &
    echo $! >"$RUN/$name.pid"
}

# Wait until `check` succeeds; fail naming the daemon and showing its log if it died or timed out.
wait_for() {
    local name="$1" what="$2" seconds="$3"; shift 3
    local deadline=$((SECONDS + seconds))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if timeout 10 "$@" >/dev/null 2>&1; then return 0; fi
        if ! pid_of "$name" >/dev/null; then
            echo "slurm_local: $name did not start ($what); the end of its log:" >&2
            log_tail "$name"
            stop_all quiet || true
            exit 1
        fi
        sleep 0.2
    done
    echo "slurm_local: $name is running but $what within ${seconds}s; the end of its log:" >&2
    log_tail "$name"
    stop_all quiet || true
    exit 1
}

need_tools() {
    local missing=() tool
    for tool in slurmctld slurmd slurmdbd sacctmgr sbatch sacct munged mungekey mariadbd mariadb-install-db mariadb; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        fail "missing ${missing[*]}: install them as root with" \
             "'apt-get update && apt-get install -y slurm-wlm slurmdbd munge mariadb-server'"
    fi
    [ "$(id -u)" = 0 ] || fail "run as root (the daemons run as root and slurmd starts jobs as their users)"
}

write_configs() {
    # This machine's cores and memory, as slurmd itself measures them.
    local hw
    hw="$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ UpTime=.*//')"
    cat >"$ETC/slurm.conf" <<EOF
# Written by scripts/slurm_local.sh: one node on 127.0.0.1.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$RUN/munge.socket
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.daemon.pid
SlurmdPidFile=$RUN/slurmd.daemon.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: processes are tracked by parent pid, memory is scheduled but not enforced.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# A job past its time limit gets SIGTERM, then SIGKILL KillWait seconds later (real clusters: often 30-60 s).
KillWait=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$RUN/munge.socket
# slurmd listens on the node's address (127.0.0.1) only; slurmctld and slurmdbd have no such setting.
CommunicationParameters=NoInAddrAny
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE $hw State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
    cat >"$ETC/slurmdbd.conf" <<EOF
# Written by scripts/slurm_local.sh.
AuthType=auth/munge
AuthInfo=socket=$RUN/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.daemon.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$ETC/db.pass")
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$ETC/slurmdbd.conf"
}

start_munge() {
    [ -s "$ETC/munge.key" ] || mungekey --create --keyfile="$ETC/munge.key" >/dev/null
    chmod 400 "$ETC/munge.key"
    launch munged munged --foreground --force --socket="$RUN/munge.socket" --key-file="$ETC/munge.key" \
        --pid-file="$RUN/munged.daemon.pid" --log-file="$LOG/munged.log" --seed-file="$STATE/munged.seed"
    wait_for munged "did not answer on $RUN/munge.socket" 20 \
        bash -c "munge --socket='$RUN/munge.socket' -n | unmunge --socket='$RUN/munge.socket'"
}

start_db() {
    local first=0
    if [ ! -d "$STATE/db/mysql" ]; then
        first=1
        mariadb-install-db --no-defaults --datadir="$STATE/db" --user=root --auth-root-authentication-method=socket \
            --skip-test-db >"$LOG/mariadbd.install.log" 2>&1 || {
            echo "slurm_local: mariadb-install-db failed; the end of $LOG/mariadbd.install.log:" >&2
            tail -n 15 "$LOG/mariadbd.install.log" | sed 's/^/    /' >&2
            stop_all quiet || true
            exit 1
        }
    fi
    launch mariadbd mariadbd --no-defaults --datadir="$STATE/db" --socket="$RUN/mysqld.sock" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --user=root --pid-file="$RUN/mariadbd.daemon.pid" --log-error="$LOG/mariadbd.log" \
        --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 --skip-log-bin
    wait_for mariadbd "did not answer on port $DB_PORT" 60 \
        mariadb --no-defaults --socket="$RUN/mysqld.sock" -e "SELECT 1"
    if [ "$first" = 1 ]; then
        mariadb --no-defaults --socket="$RUN/mysqld.sock" <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$(cat "$ETC/db.pass")';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
    fi
}

start_all() {
    need_tools
    local name port number var
    for name in "${DAEMONS[@]}"; do
        if pid_of "$name" >/dev/null; then
            fail "$name from $DIR is already running (pid $(pid_of "$name")): 'bash $0 stop' first"
        fi
    done
    for port in "$CTLD_PORT:slurmctld:CTLD" "$SLURMD_PORT:slurmd:SLURMD" "$DBD_PORT:slurmdbd:DBD" \
                "$DB_PORT:mariadbd:DB"; do
        IFS=: read -r number name var <<<"$port"
        if port_busy "$number"; then
            fail "port $number (for $name) is in use on 127.0.0.1: stop what holds it (ss -ltnp)" \
                 "or choose another port with PAMM_SLURM_${var}_PORT=..."
        fi
    done
    if [ -e "$SYSTEM_CONF" ] || [ -L "$SYSTEM_CONF" ]; then
        [ "$(readlink "$SYSTEM_CONF" || true)" = "$SLURM_CONF" ] \
            || fail "$SYSTEM_CONF is another cluster's configuration ($(readlink -f "$SYSTEM_CONF")):" \
                    "stop that cluster (its slurm_local.sh stop) or move the file away first"
    fi
    mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/ctld" "$STATE/d" "$(dirname "$SYSTEM_CONF")"
    [ -s "$ETC/db.pass" ] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$ETC/db.pass")
    write_configs
    ln -sfn "$SLURM_CONF" "$SYSTEM_CONF"
    start_munge
    start_db
    launch slurmdbd slurmdbd -D
    wait_for slurmdbd "did not answer on port $DBD_PORT" 60 sacctmgr -n show cluster
    if [ -z "$(sacctmgr -n -P show cluster format=cluster where cluster="$CLUSTER")" ]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    launch slurmctld slurmctld -D -i
    wait_for slurmctld "did not answer on port $CTLD_PORT" 60 scontrol ping
    launch slurmd slurmd -D -N "$NODE"
    wait_for slurmd "did not register node $NODE as idle" 60 \
        bash -c "sinfo -h -n '$NODE' -o '%T' | grep -qE '^(idle|mixed|allocated)'"
    say "cluster '$CLUSTER' is up: node $NODE ($(sinfo -h -n "$NODE" -o '%c CPUs, %m MB' | head -n 1))," \
        "partitions cpu and gpu;" \
        "sbatch, squeue and sacct reach it through $SYSTEM_CONF -> $SLURM_CONF"
}

STOPPED_HARD=()
# SIGTERM to the named daemons this script started (by their pids), then wait; SIGKILL after 20 s.
stop_daemons() {
    local name pid i pids=() names=()
    for name in "$@"; do
        if pid="$(pid_of "$name")"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid") names+=("$name")
        fi
        rm -f "$RUN/$name.pid"
    done
    for i in "${!pids[@]}"; do
        local deadline=$((SECONDS + 20))
        while kill -0 "${pids[$i]}" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
        if kill -0 "${pids[$i]}" 2>/dev/null; then
            kill -KILL "${pids[$i]}" 2>/dev/null || true
            STOPPED_HARD+=("${names[$i]} (pid ${pids[$i]})")
        fi
    done
}

# Cancel every job, then stop the daemons this script started, newest first.
stop_all() {
    local quiet="${1:-}" i
    if pid_of slurmctld >/dev/null; then
        if [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
            scancel --full --quiet $(squeue -h -o %i) 2>/dev/null || true
            for ((i = 0; i < 150; i++)); do
                [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
                sleep 0.2
            done
        fi
    fi
    # SLURM's daemons first, then its accounting, then the database and munge; each stage at once.
    stop_daemons slurmd slurmctld
    stop_daemons slurmdbd
    stop_daemons mariadbd munged
    if [ "$(readlink "$SYSTEM_CONF" 2>/dev/null || true)" = "$SLURM_CONF" ]; then
        rm -f "$SYSTEM_CONF"
    fi
    # Job steps that outlived slurmd would show up here.
    local steps
    steps="$(pgrep -x slurmstepd || true)"
    if [ -n "$steps" ]; then
        echo "slurm_local: slurmstepd still running (pids $(echo $steps)): a job did not end;" \
             "it is not ours to kill blindly" >&2
        return 1
    fi
    [ -z "$quiet" ] || return 0
    if [ ${#STOPPED_HARD[@]} -gt 0 ]; then
        say "stopped; killed (SIGKILL) after 20 s without exiting on SIGTERM: ${STOPPED_HARD[*]}"
    else
        say "stopped; nothing left running"
    fi
}

status_all() {
    local name pid up=0
    for name in "${DAEMONS[@]}"; do
        if pid="$(pid_of "$name")"; then
            echo "$name: running (pid $pid)"; up=$((up + 1))
        else
            echo "$name: not running"
        fi
    done
    if pid_of slurmctld >/dev/null; then
        sinfo
        squeue
    fi
    [ "$up" = 5 ]
}

case "${1:-}" in
    start) start_all ;;
    stop) stop_all ;;
    status) status_all ;;
    *) echo "usage: bash $0 start|stop|status   (state in \$PAMM_SLURM_DIR, default /tmp/pamm-slurm)" >&2; exit 2 ;;
esac
