"""agents-map's engine: from a record and a prompt to a result, for many records at once."""
