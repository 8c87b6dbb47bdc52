"""The engine: checks, the indexer, the writer, group commit and durability, the reader, and the core
that composes them (see evstore/engine/core.py for the parts and the lock order)."""
