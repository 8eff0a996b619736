"""Asynchronous checkpoints (`checkpoint.async_save`): training goes on while a checkpoint's files are written.

How: for the duration of one `engine.save_checkpoint`, the engine writes through a `SnapshotEngine`, whose
`save(state_dict, path)` lays out a host copy of the state (training mutates parameters and optimizer state in
place) and keeps the write for later. One background thread per rank then fills that copy, and training may
mutate again only once it is filled: the trainer calls `before_update()` before every `engine.step()` (and
before it rebuilds an engine), so the copy overlaps the next step's forward and backward. The same thread then
writes those files, and when they are all written, the rank's marker `<ckpt>/.written/rank_<r>`. Rank 0's thread waits
for every rank's marker, removes them and publishes the checkpoint as a synchronous save does (the run's
files, the manifest with hashes, `latest`, pruning): a checkpoint is visible only once every rank's files are
complete; a process killed before that leaves it without a manifest and `latest` where it was. The thread
runs no collective (gloo collectives from a second thread can interleave with training's and deadlock): the
markers on the shared file system are how ranks tell each other they are done. At most one save is in
flight: a save first waits for this rank's part of the previous one.

Why not DeepSpeed 0.19's own engines (deepspeed/runtime/checkpoint_engine/):
- `FastCheckpointEngine` makes writes faster (DeepNVMe's libaio/GDS through a pinned buffer) but not
  asynchronous: `save_checkpoint` returns once the bytes are written.
- `DecoupledCheckpointEngine` sends each state dict through a multiprocessing queue to a spawned writer
  process per rank; torch.multiprocessing shares the tensors' storage rather than copying it, so it must
  commit (wait for the writer, with a barrier) inside the next `engine.step()`, before the optimizer updates
  anything: the overlap is at most one step's forward and backward, and the files are complete only inside
  DeepSpeed's step, where our manifest and `latest` have no hook. Measured here (CPU gloo, ZeRO-1): it needs
  the launcher's CROSS_RANK/CROSS_SIZE variables, fails with AttributeError ('UniversalParallelInfo' has no
  'dp_rank') unless `checkpoint.writer.data_parallel` is set, and with it fails to send ZeRO's optimizer state
  ("Cowardly refusing to serialize non-leaf tensor which requires_grad").
A snapshot in this process works under every ZeRO stage (it copies whatever DeepSpeed hands to `save`;
measured under ZeRO 1, 2 and 3 on 2 CPU ranks) and keeps the files those of a synchronous save, record for
record: views into one flat buffer keep sharing one copied storage, which is what torch.save writes.
"""
from __future__ import annotations

import copy
import datetime
import logging
import shutil
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as tdist
from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine

from pretrain import checkpoint, dist
from storage.folders import CheckpointError
from storage.io import atomic_write_text

log = logging.getLogger("growlm")

WRITTEN = ".written"
"""In a checkpoint being written: one marker per rank whose files are complete (removed before the manifest)."""
MARKER_POLL_S = 0.05

Write = Callable[[], None]


Copy = tuple[torch.UntypedStorage, torch.UntypedStorage]
"""(host buffer, the storage whose bytes it must receive): one copy a snapshot leaves to the saving thread."""


def snapshot(state: Any, staging: "Staging", copies: list[Copy]) -> Any:
    """A deep copy of `state` that later in-place updates of its tensors cannot reach, its tensors in host
    memory taken from `staging` (a GPU's memory is not doubled); their bytes arrive once `fill(copies)` has run
    (appended here, one per storage). It is what torch.save writes that is kept: every storage is copied once
    (views into one flat buffer share its copy), a tensor keeps its attributes and `requires_grad`, and an
    object met twice is copied once, so every record torch.save writes is byte for byte a synchronous save's."""
    memo: dict[int, Any] = {}
    buffers: dict[int, torch.UntypedStorage] = {}
    for tensor in _tensors(state):
        if id(tensor) not in memo:
            memo[id(tensor)] = _host_view(tensor, buffers, copies, staging, memo)
    return copy.deepcopy(state, memo)


def fill(copies: list[Copy]) -> None:
    """Copy each storage into its buffer, through byte tensors: a tensor copy releases the interpreter lock
    (a storage's own `copy_` holds it, and the training thread would wait out the whole copy)."""
    for buffer, storage in copies:
        _bytes(buffer).copy_(_bytes(storage))


def _bytes(storage: torch.UntypedStorage) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


class Staging:
    """The host buffers snapshots copy into, kept from one save to the next: a buffer already in memory takes
    a copy ~2.5x faster than a new one, whose pages the kernel must first map and zero (measured here: 72 MB
    in 22 ms vs 61 ms). They hold one more copy of the state for the run, as a copy per save would at its peak."""

    def __init__(self) -> None:
        self._free: dict[int, list[torch.UntypedStorage]] = defaultdict(list)
        self._taken: list[torch.UntypedStorage] = []

    def take(self, nbytes: int) -> torch.UntypedStorage:
        """A host buffer of `nbytes`, reused when one is free."""
        free = self._free[nbytes]
        buffer = free.pop() if free else torch.UntypedStorage(nbytes)
        self._taken.append(buffer)
        return buffer

    def release(self) -> None:
        """The files are written: the buffers taken since the last release may be copied into again."""
        for buffer in self._taken:
            self._free[buffer.nbytes()].append(buffer)
        self._taken = []


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors in nested dicts, lists and tuples (those DeepSpeed's state dicts hold)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def _host_view(tensor: torch.Tensor, buffers: dict[int, torch.UntypedStorage], copies: list[Copy],
               staging: Staging, memo: dict[int, Any]) -> torch.Tensor:
    """`tensor` on a host buffer for its storage, one buffer (and one pending copy) per storage, told apart as
    torch.save does."""
    storage = tensor.untyped_storage()
    if storage._cdata not in buffers:
        buffers[storage._cdata] = staging.take(storage.nbytes())
        copies.append((buffers[storage._cdata], storage))
    out = torch.empty(0, dtype=tensor.dtype).set_(buffers[storage._cdata], tensor.storage_offset(), tensor.size(),
                                                  tensor.stride())
    if isinstance(tensor, torch.nn.Parameter):
        out = torch.nn.Parameter(out, requires_grad=tensor.requires_grad)
    else:
        out.requires_grad_(tensor.requires_grad)
    out.__dict__.update(copy.deepcopy(tensor.__dict__, memo))  # e.g. ZeRO-3's ds_id
    return out


def write_file(state: Any, path: str, zipfile: bool) -> None:
    """torch.save into a Python file: the interpreter lock is released while the bytes go out (given a path,
    torch's writer holds it through each tensor's write, and training's thread waits: on 2 busy cores the
    loop's stall per 72 MB save fell from 258-386 ms to 200-228 ms in two A/B runs). The zip's records then
    sit under `archive/` rather than the file's name; torch.load reads either."""
    with open(path, "wb") as f:
        torch.save(state, f, _use_new_zipfile_serialization=zipfile)


class SnapshotEngine(CheckpointEngine):
    """DeepSpeed's checkpoint engine during one asynchronous save: `save` snapshots the state and keeps its
    write in `writes` (in the format DeepSpeed's own engine would use); everything else goes to that engine.
    `commit` has nothing to do: publishing is ours, after every rank's writes."""

    def __init__(self, inner: CheckpointEngine, staging: Staging):
        super().__init__()
        self.name, self.inner, self.staging = "growlm-snapshot", inner, staging
        self.zipfile = getattr(inner, "zipfile_serialization", True)
        self.writes: list[Write] = []
        self.copies: list[Copy] = []

    def create(self, info: Any) -> None:
        self.inner.create(info)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.inner.makedirs(path, exist_ok=exist_ok)

    def save(self, state_dict: Any, path: str) -> None:
        self.writes.append(partial(write_file, snapshot(state_dict, self.staging, self.copies), path, self.zipfile))

    def load(self, path: str, map_location: Any = None) -> Any:
        return self.inner.load(path, map_location=map_location)

    def commit(self, info: Any) -> bool:
        return True

    def preserves_storage_sharing(self) -> bool:
        return self.inner.preserves_storage_sharing()


@contextmanager
def snapshotting(engine: Any, staging: Staging) -> Iterator[SnapshotEngine]:
    """`engine` saves through a SnapshotEngine inside the block (and loads through its own engine after)."""
    own = engine.checkpoint_engine
    engine.checkpoint_engine = SnapshotEngine(own, staging)
    try:
        yield engine.checkpoint_engine
    finally:
        engine.checkpoint_engine = own


def mark_written(ckpt: Path, rank: int, error: BaseException | None) -> None:
    """Tell rank 0 that this rank's files of `ckpt` are complete, or why they are not."""
    text = "ok\n" if error is None else f"failed: {type(error).__name__}: {error}\n"
    atomic_write_text(ckpt / WRITTEN / f"rank_{rank}", text)


def wait_for_ranks(ckpt: Path, world: int, timeout_s: float) -> None:
    """Return once every rank's marker says its files of `ckpt` are complete; raise CheckpointError naming a
    rank that failed, or the ranks still missing after `timeout_s` (a rank that died mid-write)."""
    deadline = time.monotonic() + timeout_s
    while True:
        markers = {r: ckpt / WRITTEN / f"rank_{r}" for r in range(world)}
        done = {r: m.read_text().strip() for r, m in markers.items() if m.is_file()}
        failed = {r: text for r, text in done.items() if text != "ok"}
        if failed:
            raise CheckpointError(f"{ckpt.name} is left partial: rank {min(failed)} could not write its files "
                                  f"({failed[min(failed)]})")
        if len(done) == world:
            return
        if time.monotonic() > deadline:
            missing = sorted(set(range(world)) - set(done))
            raise CheckpointError(f"{ckpt.name} is left partial: rank(s) {missing} did not finish writing their "
                                  f"files within {timeout_s:g} s (deepspeed.collective_timeout_s)")
        time.sleep(MARKER_POLL_S)


def finish_rank(ckpt: Path, rank: int, world: int, timeout_s: float, publish: Write | None,
                error: BaseException | None) -> None:
    """After this rank's writes of `ckpt` (failed with `error`, or not): its marker; on rank 0 (`publish`
    given), once every rank's marker is there, the markers removed and the checkpoint published."""
    mark_written(ckpt, rank, error)
    if error is None and publish is not None:
        wait_for_ranks(ckpt, world, timeout_s)
        shutil.rmtree(ckpt / WRITTEN)
        publish()


class InFlight:
    """One checkpoint on this rank, in a thread of its own: the snapshot's copies (then `filled` is set), its
    writes, then `finish(error)`; the first exception is kept in `error` for the training thread."""

    def __init__(self, ckpt: Path, copies: list[Copy], writes: list[Write],
                 finish: Callable[[BaseException | None], None]):
        self.ckpt, self.error = ckpt, None
        self.filled = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(copies, writes, finish),
                                        name=f"growlm-save-{ckpt.name}", daemon=True)
        self._thread.start()

    def _run(self, copies: list[Copy], writes: list[Write], finish: Callable[[BaseException | None], None]) -> None:
        try:
            try:
                fill(copies)
            finally:
                copies.clear()  # the sources may be freed
                self.filled.set()  # set on failure too: the writes below are skipped, training must not wait
            with checkpoint.naming_full_disk(self.ckpt):
                while writes:
                    writes.pop(0)()  # its snapshot is freed once written
        except BaseException as err:
            self.error = err
        try:
            finish(self.error)
        except BaseException as err:
            self.error = self.error or err

    def busy(self) -> bool:
        return self._thread.is_alive()

    def wait(self) -> None:
        self._thread.join()


class AsyncSaves(checkpoint.Saves):
    """Checkpoint saves that return once the state is snapshotted; one in flight at a time. `completed` asks
    every rank (a MAX all-reduce over a gloo group of our own: no GPU sync, and only while a save is in
    flight) whether the save in flight is published, so every rank hands it to the callbacks at the same
    step."""

    def __init__(self, root: Path, keep: int, timeout_s: float):
        super().__init__(root, keep)
        self.timeout_s = timeout_s
        self._staging = Staging()
        self._flight: InFlight | None = None
        self._group = tdist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s)) \
            if dist.world_size() > 1 else None

    def save(self, engine: Any, step: int, client_state: dict[str, Any], extra_files: dict[str, Path],
             meta: dict[str, Any], rank_state: dict[str, Any] | None = None) -> None:
        """Wait for this rank's part of the previous save, snapshot the state (collective), and return while a
        thread writes it."""
        landed = self._land()
        with snapshotting(engine, self._staging) as snapshots:
            ckpt = checkpoint.write_rank_files(engine, self.root, step, client_state, rank_state)
        self._completed += landed  # every rank has landed it: write_rank_files passed a barrier
        publish = partial(checkpoint.publish, ckpt, step, extra_files, meta, self.keep) if dist.is_main() else None
        self._flight = InFlight(ckpt, snapshots.copies, snapshots.writes,
                                partial(finish_rank, ckpt, dist.rank(), dist.world_size(), self.timeout_s, publish))

    def before_update(self) -> None:
        """Return once the save in flight holds its own copy of the state (training may then change it)."""
        if self._flight is not None:
            self._flight.filled.wait()

    def completed(self, wait: bool = False) -> list[Path]:
        if self._flight is not None:
            if wait:
                self._flight.wait()
            busy, failed = self._anywhere(self._flight.busy(), self._flight.error is not None)
            if failed:
                name = self._flight.ckpt.name
                self._land()  # raises this rank's own error
                raise CheckpointError(f"{name} is left partial: another rank could not write its files (see its "
                                      "error)")
            if not busy:
                self._completed += self._land()
        return super().completed()

    def settle(self) -> None:
        """Training is dying: finish this rank's part of the save in flight, so that a checkpoint whose files
        are all written is still published (rank 0 waits up to the collective timeout for the others')."""
        if self._flight is None:
            return
        name = self._flight.ckpt.name
        log.warning("finishing the writes of %s before exiting", name)
        try:
            self._land()
        except Exception:
            log.exception("%s was not completed; latest still names the previous checkpoint", name)

    def _land(self) -> list[Path]:
        """Wait for this rank's part of the save in flight: its checkpoint, or raise what went wrong."""
        if self._flight is None:
            return []
        flight, self._flight = self._flight, None
        flight.wait()
        self._staging.release()
        if flight.error is not None:
            raise flight.error
        return [flight.ckpt]

    def _anywhere(self, busy: bool, failed: bool) -> tuple[bool, bool]:
        """(whether any rank is still writing, whether any rank failed)."""
        flags = torch.tensor([int(busy), int(failed)])
        if self._group is not None:
            tdist.all_reduce(flags, op=tdist.ReduceOp.MAX, group=self._group)
        return bool(flags[0]), bool(flags[1])
