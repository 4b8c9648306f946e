"""The stream contract between agents-read, agents-map and agents-write (see agents(7)).

One UTF-8 JSON object per line (:mod:`.codec`), every record with an ID (:mod:`.ids`), and a
record that failed kept as an error record (:mod:`.error_record`).
"""
