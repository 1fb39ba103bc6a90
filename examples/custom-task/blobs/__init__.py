"""An example user task, shipped with its job through spec.runtime.workingDir (see ../job.yaml)."""
