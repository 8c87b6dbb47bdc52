"""evstore's power-loss harness: record a workload's file-system calls with strace, derive the states
a power cut could leave (a model of un-synced data and directory entries, under strict POSIX or
journaling metadata rules), materialise each one and check it with evstore. See README.md."""
