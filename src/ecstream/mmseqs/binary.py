"""The ``mmseqs`` executable: find it, report its version, run it with its output logged."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.csv as pacsv

ENV_VAR = "ECSTREAM_MMSEQS"
INSTALL_HINT = (
    "install MMseqs2 (Debian/Ubuntu: 'apt-get install mmseqs2'; conda: "
    "'conda install -c bioconda mmseqs2'; or a static build from https://mmseqs.com), "
    f"or point {ENV_VAR} at the mmseqs executable"
)
_TSV_BLOCK = 1 << 24  # bytes per block when reading MMseqs2 tab-separated output


class MMseqsNotFound(RuntimeError):
    """The ``mmseqs`` executable is not installed (or not where ``ECSTREAM_MMSEQS`` says)."""


class MMseqsError(RuntimeError):
    """An MMseqs2 command failed; the message holds the command and the tail of its stderr."""


def find_mmseqs() -> str:
    """Path of the mmseqs executable: ``$ECSTREAM_MMSEQS`` if set, else ``mmseqs`` on the PATH."""
    env = os.environ.get(ENV_VAR)
    if env:
        path = shutil.which(env)
        if path is None:
            raise MMseqsNotFound(f"{ENV_VAR}={env!r} is not an executable file: {INSTALL_HINT}")
        return path
    path = shutil.which("mmseqs")
    if path is None:
        raise MMseqsNotFound(f"MMseqs2 ('mmseqs') was not found on the PATH: {INSTALL_HINT}")
    return path


def available() -> bool:
    """Whether an mmseqs executable can be found."""
    try:
        find_mmseqs()
    except MMseqsNotFound:
        return False
    return True


@cache
def _version(binary: str) -> str:
    done = subprocess.run([binary, "version"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise MMseqsError(f"'{binary} version' failed: {_tail(done.stderr or done.stdout)}")
    return done.stdout.strip()


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@dataclass
class MMseqs:
    """The mmseqs executable and the number of threads to run it with."""

    binary: str
    threads: int

    @classmethod
    def find(cls, threads: int | None = None) -> MMseqs:
        """Locate mmseqs (see :func:`find_mmseqs`); ``threads`` defaults to ``os.cpu_count()``."""
        return cls(find_mmseqs(), int(threads or os.cpu_count() or 1))

    @property
    def version(self) -> str:
        """Version string, e.g. ``14-7e284`` (Debian builds append ``+ds-…``)."""
        return _version(self.binary)

    def run(self, args: Sequence[str | int | os.PathLike[str]], workdir: Path, log: str) -> None:
        """Run ``mmseqs ARGS``; stdout and stderr go to ``workdir/LOG.{out,err}``.

        Raises :class:`MMseqsError` with the command, its exit status and the tail of stderr.
        MMseqs2's workflows start further mmseqs processes; all of them die with ecstream,
        whether it fails, is interrupted or is killed (see :func:`_supervised`).
        """
        workdir.mkdir(parents=True, exist_ok=True)
        command = [self.binary, *map(str, args)]
        out, err = workdir / f"{log}.out", workdir / f"{log}.err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            code = _supervised(command, fo, fe)
        if code != 0:
            tail = _tail(err.read_text(errors="replace")) or _tail(out.read_text(errors="replace"))
            raise MMseqsError(
                f"MMseqs2 failed (exit status {code}): {' '.join(command)}\n{tail}\n"
                f"(full output: {out}, {err})"
            )


#: Runs the command in the background and waits; on SIGTERM (sent by the kernel when ecstream
#: dies, see _pdeathsig) it kills its whole process group: the command and every process
#: the command started.
_SUPERVISOR = 'trap "kill -KILL 0" TERM INT HUP; "$@" & wait $!'


def _pdeathsig() -> Callable[[], None] | None:
    """A pre-exec function asking the kernel for SIGTERM when the parent dies (Linux only).

    libc is looked up here, in the parent: between fork and exec only the call itself runs.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):  # not Linux: the group is still killed on our errors
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


def _supervised(command: list[str], stdout: BinaryIO, stderr: BinaryIO) -> int:
    """Run ``command`` under a small shell supervisor in a process group of its own; return its
    exit status. Any exception here (Ctrl-C included) kills the group before it propagates."""
    process = subprocess.Popen(
        ["/bin/sh", "-c", _SUPERVISOR, "mmseqs-supervisor", *command],
        stdout=stdout,
        stderr=stderr,
        process_group=0,
        preexec_fn=_pdeathsig(),
    )
    try:
        return process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


def write_fasta(fh: BinaryIO, first: int, seqs: Sequence[bytes]) -> None:
    """Records as FASTA with their row numbers as names (MMseqs2 keeps only the first word)."""
    fh.write(b"".join(b">%d\n%s\n" % (first + i, s) for i, s in enumerate(seqs)))


def read_tsv(path: Path, names: Sequence[str], types: dict[str, pa.DataType]) -> Iterator[dict]:
    """Blocks of a headerless tab-separated MMseqs2 output file as dicts of numpy arrays."""
    if path.stat().st_size == 0:
        return
    reader = pacsv.open_csv(
        str(path),
        read_options=pacsv.ReadOptions(column_names=list(names), block_size=_TSV_BLOCK),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types=types),
    )
    for batch in reader:
        yield {n: batch.column(n).to_numpy(zero_copy_only=False) for n in names}
