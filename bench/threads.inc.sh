# Sourced by the bench scripts that run three Cairn nodes on this one machine.
#
# Worker threads of each node (`cairn server` reads CAIRN_THREADS; `--threads`): the three
# nodes share the machine's cores, so each gets a third of them, at least one, as `cairn
# playground` divides them. A thread per core in each node costs CPU on hand-offs between
# threads (docs/benchmarks.md, fifteenth run). Set CAIRN_THREADS to override; builds older
# than the flag ignore the variable.
export CAIRN_THREADS=${CAIRN_THREADS:-$(( $(nproc) / 3 > 1 ? $(nproc) / 3 : 1 ))}
