"""agents watch: one view of the processes of jobs that write --status documents."""
