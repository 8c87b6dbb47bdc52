"""Storage: the store directory (`directory`), durable names (`durable`), the segment files of the log
(`segments`), the one loop that scans them (`scan`), reading a log without the store (`logfiles`),
and the LMDB index with every key layout (`index`)."""
