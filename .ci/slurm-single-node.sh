#!/usr/bin/env bash
# Single-node Slurm on localhost for CI (Debian 12 / Slurm 22.05): root, no systemd, no cgroups.
#   slurm-single-node.sh install  apt-get the Debian packages (munge, slurmctld, slurmd, client, slurmdbd, MariaDB)
#   slurm-single-node.sh up       configure and start munged, [mariadbd, slurmdbd,] slurmctld, slurmd
#   slurm-single-node.sh down     cancel jobs, stop those daemons by PID, remove Slurm state
# ACCOUNTING=0 skips MariaDB + slurmdbd (then `sacct` fails; segbench falls back to `squeue`).
# Why each non-default slurm.conf setting is there: README, "Trying it on one machine".
set -euo pipefail
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
ACCOUNTING=${ACCOUNTING:-1}
DB_PASS=${DB_PASS:-ci-only-password}   # local socket only (--skip-networking); not a secret

wait_for() {  # wait_for SECONDS COMMAND...: retry COMMAND every 0.5 s
  local tries=$(( $1 * 2 )); shift
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  echo "timed out waiting for: $*" >&2; return 1
}

stop_pidfile() {  # stop_pidfile FILE: SIGTERM the daemon whose PID is in FILE and wait for it to exit
  local pid
  [ -s "$1" ] || return 0
  pid=$(cat "$1")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi   # still there after 30 s
  fi
  rm -f "$1"   # slurmctld/slurmdbd leave it behind; a stale /run/slurmctld.pid breaks `apt-get remove slurmctld`
}

install_packages() {  # not `install`: that would shadow install(1), which `up` uses
  local t0
  t0=$(date +%s)
  if [ "$(id -u)" != 0 ]; then echo "slurm-single-node.sh install needs root" >&2; return 1; fi
  # The packages' postinst scripts print "policy-rc.d denied execution of start" where no init system runs: `up`
  # starts the daemons itself.
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
  echo "slurm installed in $(( $(date +%s) - t0 ))s"
}

up() {
  local t0 hw topo mem acct
  t0=$(date +%s)

  # munge: the Debian package creates /etc/munge/munge.key; create one if it is missing.
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged             # daemonises; PID in /run/munge/munged.pid
  munge -n | unmunge >/dev/null

  # slurm.conf: CPUs and memory as slurmd detects them (declaring more than the node has drains it).
  hw=$(slurmd -C | head -1)   # NodeName=<host> CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=..
  topo=$(sed -e 's/^NodeName=[^ ]* //' -e 's/ *RealMemory=.*//' <<<"$hw")
  mem=$(( $(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw") * 95 / 100 ))
  if [ "$ACCOUNTING" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux"
  else
    acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  install -d -m 0755 /etc/slurm
  cat > /etc/slurm/slurm.conf <<EOF
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=5,sched_interval=5
ReturnToService=2
EnforcePartLimits=ALL
KillWait=5
${acct}
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 ${topo} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  install -d -o slurm -g slurm -m 0755 /var/spool/slurmctld /var/log/slurm
  install -d -m 0755 /var/spool/slurmd

  if [ "$ACCOUNTING" = 1 ]; then
    # MariaDB on its Unix socket only; the package has already created /var/lib/mysql.
    install -d -o mysql -g mysql -m 0755 /run/mysqld /var/log/mysql
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    setsid /usr/sbin/mariadbd --user=mysql --skip-networking \
      >/var/log/mysql/mariadbd.log 2>&1 </dev/null &   # PID in /run/mysqld/mysqld.pid
    wait_for 60 mariadb-admin ping
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
    cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=${DB_PASS}
StorageLoc=slurm_acct_db
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
EOF
    chown slurm:slurm /etc/slurm/slurmdbd.conf && chmod 0600 /etc/slurm/slurmdbd.conf
    /usr/sbin/slurmdbd                              # daemonises; PID in /run/slurmdbd.pid
    wait_for 60 sacctmgr -n list cluster
    sacctmgr -i add cluster ci >/dev/null 2>&1 || true   # fails harmlessly if it exists
  fi

  /usr/sbin/slurmctld                               # daemonises, runs as SlurmUser; PID in /run/slurmctld.pid
  /usr/sbin/slurmd -N localhost                     # the node is "localhost", not $(hostname)
  wait_for 60 bash -c "sinfo -h -N -o %T | grep -qx idle"
  sinfo
  srun -N1 -n1 hostname >/dev/null                  # interactive step works
  if [ "$ACCOUNTING" = 1 ]; then
    wait_for 30 bash -c "sacct -X -n -o State -S now-5minutes | grep -q COMPLETED"
    echo "sacct works"
  fi
  echo "slurm up in $(( $(date +%s) - t0 ))s"
}

down() {
  if [ -s /run/slurmctld.pid ] && kill -0 "$(cat /run/slurmctld.pid)" 2>/dev/null; then
    scancel --partition=debug                          # every job of every user (we are root)
    wait_for 60 bash -c '[ -z "$(squeue -h)" ]' || true   # at most KillWait (5 s) for jobs ignoring SIGTERM
  fi
  stop_pidfile /run/slurmd.pid
  stop_pidfile /run/slurmctld.pid
  stop_pidfile /run/slurmdbd.pid
  if [ -s /run/mysqld/mysqld.pid ]; then
    mariadb -e "DROP DATABASE IF EXISTS slurm_acct_db" 2>/dev/null || true   # job ids restart at 1 next time
    stop_pidfile /run/mysqld/mysqld.pid
  fi
  stop_pidfile /run/munge/munged.pid
  rm -rf /var/spool/slurmctld /var/spool/slurmd
}

case "${1:-up}" in
  install) install_packages ;;
  up | down) "$1" ;;
  *) echo "usage: $0 install|up|down" >&2; exit 2 ;;
esac
