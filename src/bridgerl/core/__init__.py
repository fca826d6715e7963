"""The bottom layer: facts and process utilities every other layer reads, importing nothing of bridgerl
above it.

stage_table  the stages and the files they read and write (one table)
methods      the training methods and the needs of their update rules (one table)
keys         dotted configuration keys (`a.b.c`): read, write, walk
refs         references to a function by name ('module:fn', 'file.py:fn')
io           atomic writes, JSON/JSONL, content digests, data errors
locks, parent_watch, quiet, threads   what a running command needs of its process
"""
