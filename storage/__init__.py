"""Everything that reads or writes a run's or a checkpoint's files, below every package that does so.

Checkpoint folders and their manifests (folders), weights folders (weights), DeepSpeed's universal form
(universal), what a grown folder carries for the run that continues it (carry), the pickle allowlist that
guards every `.pt` file (pickles), atomic writes (io) and the tokenizer files a folder carries
(tokenizer_files). It imports `model` only for the model config a weights folder records; `pretrain`,
`growth`, the jobs and the scripts all read and write through it (docs/design.md, "Layers").
Importing the package loads nothing: the run config imports some of these modules and must not pull in torch.
"""
