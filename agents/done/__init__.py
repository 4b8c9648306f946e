"""The output's state: which IDs an output holds, durable appends, repair and compaction.

Both ``agents-map --resume`` and ``agents-write --append`` go through this package.
"""
