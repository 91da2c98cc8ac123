#!/usr/bin/env bash
# Host tuning report for edgeshard (see tuning/README.md for why each knob matters).
#
#   tuning/check.sh            read-only report: current value, advised value, OK/ADVISE per knob
#   tuning/check.sh --apply    also raise the sysctls that are below the advice (sysctl -w, runtime only;
#                              never lowers a value) and set the CPU governor to "performance"
#   tuning/check.sh --apply --persist   ... and write them to /etc/sysctl.d/90-edgeshard.conf
#   options: --max-conns N     connections you plan for (default 100000): sizes nofile / file-max advice
#            --shard-cpus LIST CPUs edgeshard will run on (for the IRQ / isolcpus advice)
#
# Limits (ulimit -n / -l), IRQ/RPS/XPS affinity, isolcpus/nohz_full are reported with advice only:
# they belong in the service manager (systemd LimitNOFILE=, LimitMEMLOCK=), irqbalance config or the
# kernel command line, and changing them blindly on a shared host does more harm than good.
set -uo pipefail

APPLY=0 PERSIST=0 MAXCONN=100000 SHARD_CPUS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --apply) APPLY=1 ;;
    --persist) PERSIST=1 ;;
    --max-conns) MAXCONN=${2:?}; shift ;;
    --shard-cpus) SHARD_CPUS=${2:?}; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$PERSIST" = 1 ] && [ "$APPLY" = 0 ]; then echo "--persist needs --apply" >&2; exit 2; fi
if [ "$APPLY" = 1 ] && [ "$(id -u)" != 0 ]; then echo "--apply needs root" >&2; exit 2; fi

NCPU=$(nproc 2>/dev/null || echo 1)
[ -n "$SHARD_CPUS" ] || SHARD_CPUS="0-$((NCPU - 1))"
ADVISE_COUNT=0
PERSIST_LINES=()

row() { # knob current advised status note
  printf '%-34s %-26s %-26s %-7s %s\n' "$1" "$2" "$3" "$4" "$5"
  [ "$4" = ADVISE ] && ADVISE_COUNT=$((ADVISE_COUNT + 1))
  return 0
}

sysctl_get() { local p="/proc/sys/${1//.//}"; [ -r "$p" ] && tr -s '\t ' ' ' < "$p" || echo "n/a"; }

set_sysctl() { # name value
  if [ "$APPLY" = 1 ]; then
    if sysctl -q -w "$1=$2" >/dev/null 2>&1; then
      echo "    applied: $1 = $2"
      PERSIST_LINES+=("$1 = $2")
    else
      echo "    could not set $1 (read-only in this container/namespace?)"
    fi
  fi
}

# kinds: min (current >= advised), max3 (3rd field >= advised 3rd, others untouched),
#        range (low <= advised low and high >= advised high), eq (exactly), le (current <= advised)
check_sysctl() { # name advised kind note
  local name=$1 adv=$2 kind=$3 note=$4 cur ok=1 newval
  cur=$(sysctl_get "$name")
  if [ "$cur" = n/a ]; then row "$name" "n/a" "$adv" "-" "not present on this kernel"; return; fi
  newval=$adv
  case "$kind" in
    min)   [ "$cur" -ge "$adv" ] || ok=0 ;;
    le)    [ "$cur" -le "$adv" ] || ok=0 ;;
    eq)    [ "$cur" = "$adv" ] || ok=0 ;;
    max3)  set -- $cur; local a1=$1 a2=$2 a3=$3; set -- $adv
           if [ "$a3" -lt "$3" ]; then ok=0; newval="$a1 $a2 $3"; fi ;;
    range) set -- $cur; local lo=$1 hi=$2; set -- $adv
           if [ "$lo" -gt "$1" ] || [ "$hi" -lt "$2" ]; then ok=0
             newval="$(( lo < $1 ? lo : $1 )) $(( hi > $2 ? hi : $2 ))"; fi ;;
  esac
  if [ $ok = 1 ]; then row "$name" "$cur" "$adv" OK "$note"
  else row "$name" "$cur" "$adv" ADVISE "$note"; set_sysctl "$name" "$newval"; fi
}

echo "edgeshard host tuning report: $(hostname) $(uname -r), $NCPU CPUs, mode: $([ $APPLY = 1 ] && echo APPLY || echo read-only)"
echo "planning for ${MAXCONN} concurrent client connections, shard CPUs ${SHARD_CPUS}"
echo
printf '%-34s %-26s %-26s %-7s %s\n' KNOB CURRENT ADVISED STATUS NOTE
printf '%s\n' "---------------------------------- -------------------------- -------------------------- ------- ----"

echo "# accept path"
check_sysctl net.core.somaxconn 65535 min "cap on every listen() backlog"
check_sysctl net.ipv4.tcp_max_syn_backlog 65535 min "half-open (SYN_RECV) queue per listener"
check_sysctl net.core.netdev_max_backlog 16384 min "per-CPU input queue before the stack (bursts, RPS)"
echo "# outbound (proxy -> upstream) connections"
check_sysctl net.ipv4.ip_local_port_range "10240 65535" range "ephemeral ports per (src ip, dst ip:port)"
check_sysctl net.ipv4.tcp_tw_reuse 1 eq "reuse TIME_WAIT for outbound connects (2 = loopback only)"
check_sysctl net.ipv4.tcp_slow_start_after_idle 0 eq "pooled keep-alive conns keep their cwnd"
echo "# socket buffers"
check_sysctl net.core.rmem_max 16777216 min "cap for SO_RCVBUF set by the application"
check_sysctl net.core.wmem_max 16777216 min "cap for SO_SNDBUF set by the application"
check_sysctl net.ipv4.tcp_rmem "4096 131072 16777216" max3 "autotuning min/default/max (only max is raised)"
check_sysctl net.ipv4.tcp_wmem "4096 16384 16777216" max3 "autotuning min/default/max (only max is raised)"
echo "# file descriptors"
FD_ADV=$(( MAXCONN * 2 + 65536 ))  # client + upstream socket per connection, plus slack
[ $FD_ADV -lt 1048576 ] && FD_ADV=1048576
check_sysctl fs.file-max $((FD_ADV * 2)) min "system-wide open files"
check_sysctl fs.nr_open $FD_ADV min "ceiling for any process's RLIMIT_NOFILE"
NOFILE_S=$(ulimit -Sn) NOFILE_H=$(ulimit -Hn)
NEED_FD=$(( MAXCONN * 2 + 1024 ))
if [ "$NOFILE_H" = unlimited ] || [ "$NOFILE_H" -ge "$NEED_FD" ]; then
  st=OK; [ "$NOFILE_S" != unlimited ] && [ "$NOFILE_S" -lt "$NEED_FD" ] && st=ADVISE
else st=ADVISE; fi
row "nofile (ulimit -n soft/hard)" "$NOFILE_S/$NOFILE_H" ">= $NEED_FD" $st "systemd: LimitNOFILE=$NEED_FD; shell: ulimit -n (this shell's)"
MEMLOCK=$(ulimit -l)
KMAJ=$(uname -r | cut -d. -f1) KMIN=$(uname -r | cut -d. -f2 | tr -dc 0-9)
if [ "$KMAJ" -gt 5 ] || { [ "$KMAJ" -eq 5 ] && [ "${KMIN:-0}" -ge 12 ]; }; then
  row "memlock (ulimit -l, KiB)" "$MEMLOCK" "any (kernel >= 5.12)" OK "io_uring rings are memcg-accounted on this kernel"
else
  st=OK; [ "$MEMLOCK" != unlimited ] && [ "$MEMLOCK" -lt 65536 ] && st=ADVISE
  row "memlock (ulimit -l, KiB)" "$MEMLOCK" ">= 65536 or unlimited" $st "kernel < 5.12 charges io_uring rings to RLIMIT_MEMLOCK; else falls back to epoll"
fi
echo "# io_uring"
IOU=$(sysctl_get kernel.io_uring_disabled)
case "$IOU" in
  0) row kernel.io_uring_disabled 0 0 OK "io_uring available to all" ;;
  n/a) row kernel.io_uring_disabled n/a 0 - "knob absent (kernel < 6.6): io_uring enabled if compiled in" ;;
  *) row kernel.io_uring_disabled "$IOU" 0 ADVISE "1 = only io_uring_group members, 2 = off: edgeshard --io-engine auto falls back to epoll"
     set_sysctl kernel.io_uring_disabled 0 ;;
esac
echo "# CPU frequency"
GOVS=$(cat /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor 2>/dev/null | sort | uniq -c | awk '{printf "%s%sx%s", sep, $1, $2; sep=","}')
if [ -z "$GOVS" ]; then
  row "cpu governor" "n/a (no cpufreq)" performance - "VM or fixed frequency; nothing to do"
elif [ "$(cat /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor | sort -u)" = performance ]; then
  row "cpu governor" "$GOVS" performance OK ""
else
  row "cpu governor" "$GOVS" performance ADVISE "powersave/schedutil add wake-up latency and skew benchmarks"
  if [ "$APPLY" = 1 ]; then
    for g in /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor; do echo performance > "$g" 2>/dev/null; done
    echo "    applied: governor performance (runtime only)"
  fi
fi

echo
echo "# NIC queues, IRQ, RPS/XPS affinity (advice only, never changed by --apply)"
found=0
for dev in /sys/class/net/*; do
  ifn=$(basename "$dev")
  [ "$ifn" = lo ] && continue
  [ -e "$dev/device" ] || continue   # virtual devices (bridges, veth, ifb) have no queues/IRQs of their own
  found=1
  drv=$(basename "$(readlink -f "$dev/device/driver" 2>/dev/null)" 2>/dev/null)
  nrx=$(ls -d "$dev"/queues/rx-* 2>/dev/null | wc -l) ntx=$(ls -d "$dev"/queues/tx-* 2>/dev/null | wc -l)
  echo "  $ifn (driver ${drv:-?}): $nrx rx / $ntx tx queues"
  irqs=$(grep -E "(^| )$ifn([-: ]|$)|$ifn-" /proc/interrupts 2>/dev/null | awk -F: '{gsub(/ /,"",$1); print $1}')
  for d in "$dev/device" "$dev/device/.."; do   # virtio: the PCI parent holds the MSI vectors
    if [ -z "$irqs" ] && [ -d "$d/msi_irqs" ]; then irqs=$(ls "$d/msi_irqs"); fi
  done
  [ -z "$irqs" ] && echo "    (no IRQs found for $ifn in /proc/interrupts or msi_irqs)"
  for irq in $irqs; do
    name=$(awk -v i="$irq:" '$1==i {print $NF}' /proc/interrupts)
    printf '    irq %-5s %-22s smp_affinity_list=%s\n' "$irq" "${name:-?}" "$(cat /proc/irq/$irq/smp_affinity_list 2>/dev/null || echo ?)"
  done
  for q in "$dev"/queues/rx-*; do [ -e "$q/rps_cpus" ] && printf '    %-8s rps_cpus=%s rps_flow_cnt=%s\n' "$(basename "$q")" "$(cat "$q/rps_cpus" 2>/dev/null)" "$(cat "$q/rps_flow_cnt" 2>/dev/null)"; done
  for q in "$dev"/queues/tx-*; do [ -e "$q/xps_cpus" ] && printf '    %-8s xps_cpus=%s\n' "$(basename "$q")" "$(cat "$q/xps_cpus" 2>/dev/null || echo n/a)"; done
done
[ $found = 0 ] && echo "  no physical NIC found (only loopback/virtual interfaces): nothing to pin"
if pgrep -x irqbalance >/dev/null 2>&1; then echo "  irqbalance: running (it will move IRQs you pin by hand; use IRQBALANCE_BANNED_CPULIST=$SHARD_CPUS or stop it)"
else echo "  irqbalance: not running"; fi
cat <<EOF
  advice: with as many NIC queues as shards, bind queue i's IRQ to shard CPU i (smp_affinity_list)
          and set xps_cpus of tx-i to the same CPU; leave rps_cpus=0 (RSS already spreads flows).
          With fewer queues than shards, either enable RPS (rps_cpus = shard CPUs mask, rps_flow_cnt
          4096 + net.core.rps_sock_flow_entries 32768) or keep IRQs on CPUs that run no shard.
EOF

echo
echo "# CPU isolation (advice only; kernel command line, needs a reboot)"
echo "  cmdline: $(tr ' ' '\n' < /proc/cmdline | grep -E '^(isolcpus|nohz_full|rcu_nocbs|irqaffinity)=' | tr '\n' ' ' || true)"
echo "  isolated: $(cat /sys/devices/system/cpu/isolated 2>/dev/null || echo n/a)  nohz_full: $(cat /sys/devices/system/cpu/nohz_full 2>/dev/null || echo n/a)"
cat <<EOF
  advice: on a dedicated proxy host, keep CPU 0 (and its SMT sibling) for the OS and IRQs, and give the
          shards the rest: isolcpus=managed_irq,domain,<shard cpus> nohz_full=<shard cpus>
          rcu_nocbs=<shard cpus> irqaffinity=<housekeeping cpus>; then run
          edgeshard run --cpus <shard cpus>. Do not isolate CPUs on a shared or small (<= 4 CPU) host.
EOF

if [ "$PERSIST" = 1 ] && [ ${#PERSIST_LINES[@]} -gt 0 ]; then
  f=/etc/sysctl.d/90-edgeshard.conf
  { echo "# written by edgeshard tuning/check.sh --apply --persist on $(date -Iseconds)"; printf '%s\n' "${PERSIST_LINES[@]}"; } > "$f"
  echo; echo "persisted ${#PERSIST_LINES[@]} sysctl(s) to $f"
fi
echo
if [ "$APPLY" = 1 ]; then echo "$ADVISE_COUNT knob(s) were below advice; sysctls above were raised where the kernel allowed it."
else echo "$ADVISE_COUNT knob(s) differ from the advice. Nothing was changed (read-only). Use --apply to raise the sysctls."; fi
exit 0
