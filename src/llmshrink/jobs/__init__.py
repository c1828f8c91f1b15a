"""Jobs: what each command does, end to end (load the data, run the algorithm, evaluate, write the
output), over the layers below; the CLI and recipes are thin layers over these."""
