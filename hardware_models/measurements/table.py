"""Read a measurement table in the format of the calibration data (data/README.md).

Columns used: `spec` and `input` (the network), a latency column (`latency_ms`, or one ending in
`_latency_ms` such as HW-NAS-Bench's `raspi4_latency_ms`), and where present `board`, `runtime`,
`threads`, `precision`, `fps_multi_thread`, `source`. Missing settings take the target's defaults, so
a bare `spec,input,latency_ms` table calibrates too. Rows without a spec (networks with no torch
equivalent) are skipped and reported, never guessed.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hardware_models.graph.executed import parse_input


@dataclass(frozen=True)
class Measurement:
    row: int                       # 1-based data row number in the file
    spec: str
    input_shape: tuple[int, ...]
    latency_ms: float
    board: str = ""
    runtime: str = ""
    threads: int = 0               # 0: the target's default
    precision: str = ""
    clock_ghz: float = 0.0
    fps_multi_thread: float = math.nan
    source: str = ""

    @property
    def label(self) -> str:
        scheme, _, argument = self.spec.partition(":")
        # An ONNX path is long; its last two parts (bundle folder, file) say which network it is.
        name = f"onnx:.../{'/'.join(Path(argument).parts[-2:])}" if scheme == "onnx" else self.spec
        return f"{name} [{self.input_shape[-1]}px, {self.precision or 'default'}, {self.threads or '-'}t]"


@dataclass(frozen=True)
class MeasurementTable:
    path: str
    sha256: str
    rows: tuple[Measurement, ...]
    skipped: tuple[str, ...]
    merged: tuple[str, ...] = ()   # repeated measurements averaged by `deduplicate`
    files: tuple[tuple[str, str], ...] = ()   # (file name, sha256) of every file the rows come from

    @property
    def name(self) -> str:
        return " + ".join(n for n, _ in self.files) or Path(self.path).name


def _latency_column(header: Sequence[str]) -> str:
    if "latency_ms" in header:
        return "latency_ms"
    candidates = [h for h in header if h.endswith("_latency_ms")]
    if len(candidates) != 1:
        raise ValueError(f"measurement table needs one latency column (latency_ms or *_latency_ms); "
                         f"found columns {list(header)}")
    return candidates[0]


def _precision(text: str, note: str) -> str:
    """`fp32`/`int8`; PyTorch tutorial rows say 'see note' and the note says int8 (quantize=True)."""
    text = text.strip().lower()
    if text in ("fp32", "int8", "fp16"):
        return text
    if "int8" in note.lower() or "quantiz" in note.lower():
        return "int8"
    return ""


def _clock_ghz(board: str) -> float:
    match = re.search(r"([\d.]+)\s*GHz", board)
    return float(match.group(1)) if match else 0.0


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _int(text: str | None) -> int:
    value = _float(text)
    return 0 if math.isnan(value) else int(value)


def resolve_spec(spec: str, folder: Path) -> str:
    """`onnx:PATH` specs name a file relative to the table's folder (rpi/run_onnx.py writes them so); made
    absolute here so that the row means the same file wherever calibrate runs. A table is data: the file must be
    inside the table's folder (no absolute path, no `..` out of it)."""
    scheme, _, argument = spec.partition(":")
    if scheme != "onnx":
        return spec
    resolved = (folder / argument).resolve()
    if Path(argument).is_absolute() or not resolved.is_relative_to(folder.resolve()):
        raise ValueError(f"spec {spec!r} names a file outside the table's folder {folder}; keep the ONNX file next to "
                         "(or below) the CSV and name it relative to it")
    return f"onnx:{resolved}"


def _rows(path: Path) -> tuple[bytes, csv.DictReader]:
    """The file's bytes and a CSV reader over them; a file that is not readable text is a one-line ValueError."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the measurement table ({error.strerror or error}); check the path "
                         "and its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text CSV (a binary file?); give the CSV of measurements") from None
    if "\x00" in text:
        raise ValueError(f"{path}: holds NUL bytes, so it is no text CSV; give the CSV of measurements")
    return raw, csv.DictReader(text.splitlines())


def _latency(record: dict, column: str, path: Path, number: int, name: str) -> float:
    """The row's latency; text that is not a finite number (inf, nan, 1e999) is an error naming the row."""
    text = (record.get(column) or "").strip()
    value = _float(text)
    if text and (not math.isfinite(value)) and not _is_missing(text):
        raise ValueError(f"{path} row {number} ({name}): {column} = {text!r} is not a finite number; fix the value "
                         "or delete the row")
    return value


def _is_missing(text: str) -> bool:
    """Words a table uses for a value it does not have (skipped, as an empty cell is)."""
    return text.lower() in ("na", "n/a", "none", "-", "?")


def load_measurements(path: str | Path) -> MeasurementTable:
    path = Path(path)
    raw, reader = _rows(path)
    header = reader.fieldnames or []
    if "spec" not in header or "input" not in header:
        raise ValueError(f"{path}: a measurement table needs 'spec' and 'input' columns; found {header}")
    latency = _latency_column(header)
    rows, skipped = [], []
    for number, record in enumerate(reader, start=1):
        spec = (record.get("spec") or "").strip()
        name = record.get("model") or record.get("arch_index") or spec
        if not spec:
            skipped.append(f"row {number} ({name}): no spec (no torch equivalent named)")
            continue
        value = _latency(record, latency, path, number, name)
        if not value > 0:
            skipped.append(f"row {number} ({name}): no positive latency")
            continue
        board = record.get("board") or ""
        rows.append(Measurement(
            row=number, spec=resolve_spec(spec, path.parent), input_shape=parse_input(record["input"]),
            latency_ms=value, board=board,
            runtime=record.get("runtime") or "", threads=_int(record.get("threads")),
            precision=_precision(record.get("precision") or "", record.get("note") or ""),
            clock_ghz=_clock_ghz(board), fps_multi_thread=_float(record.get("fps_multi_thread")),
            source=record.get("source") or ""))
    digest = hashlib.sha256(raw).hexdigest()
    return MeasurementTable(str(path), digest, tuple(rows), tuple(skipped), files=((path.name, digest),))


def load_tables(paths: Sequence[str | Path]) -> MeasurementTable:
    """Several measurement files as one table (the built-in Pi 4 profile fits rpi.csv and rpi_runtimes.csv).

    Rows are renumbered through the files (row numbers key the build tags, so they must be unique); skipped
    rows name their file. One file is returned as `load_measurements` reads it.
    """
    tables = [load_measurements(p) for p in paths]
    if len(tables) == 1:
        return tables[0]
    rows, skipped, offset = [], [], 0
    for table in tables:
        rows += [dataclasses.replace(r, row=r.row + offset) for r in table.rows]
        skipped += [f"{Path(table.path).name} {s}" for s in table.skipped]
        offset += len(table.rows) + len(table.skipped)
    files = tuple(f for t in tables for f in t.files)
    combined = hashlib.sha256("".join(f"{n}:{d}\n" for n, d in files).encode()).hexdigest()
    return MeasurementTable(" + ".join(str(p) for p in paths), combined, tuple(rows), tuple(skipped), files=files)


def board_key(board: str) -> str:
    """`Raspberry Pi 5 ...` -> rpi5, `Raspberry Pi 4 Model B ...` -> rpi4, anything else -> ''."""
    text = board.lower()
    match = re.search(r"pi\s?([45])\b", text)
    return f"rpi{match.group(1)}" if match else ""


def only_board(table: MeasurementTable, board: str) -> MeasurementTable:
    """Rows measured on `board` or on an unnamed board; rows that name another Pi are skipped and listed.

    A Pi 5's Cortex-A76 does more per cycle than the Pi 4's A72: one parameter set cannot serve both boards,
    so each board's profile fits only its own rows.
    """
    keep, skipped = [], []
    for row in table.rows:
        other = board_key(row.board)
        if other and other != board:
            skipped.append(f"row {row.row} ({row.spec}): measured on {other}, not {board}")
        else:
            keep.append(row)
    return dataclasses.replace(table, rows=tuple(keep), skipped=table.skipped + tuple(skipped))


def _setting(row: Measurement) -> tuple:
    """What makes two rows the same measurement: network, input and every setting it was run at."""
    return (row.spec, row.input_shape, row.board.strip().lower(), row.runtime.strip().lower(), row.threads,
            row.precision, row.clock_ghz)


def deduplicate(table: MeasurementTable) -> MeasurementTable:
    """One row per (network, input, board, runtime, threads, precision, clock), latencies averaged.

    Repeated measurements of one network (the thesis's ResNet-50 after PTQ, QAT from weights and QAT from
    scratch: one deployed graph, three rows) would otherwise count three times in the fit and three times
    in every error score. The merged row keeps the first row's number and source; `merged` says what.
    """
    groups: dict[tuple, list[Measurement]] = {}
    for row in table.rows:
        groups.setdefault(_setting(row), []).append(row)
    rows, merged = [], []
    for members in groups.values():
        first = members[0]
        if len(members) == 1:
            rows.append(first)
            continue
        fps = [m.fps_multi_thread for m in members if not math.isnan(m.fps_multi_thread)]
        rows.append(dataclasses.replace(
            first, latency_ms=sum(m.latency_ms for m in members) / len(members),
            fps_multi_thread=sum(fps) / len(fps) if fps else math.nan))
        merged.append(f"rows {', '.join(str(m.row) for m in members)} ({first.spec}): the same network and "
                      f"setting measured {len(members)} times, averaged")
    return dataclasses.replace(table, rows=tuple(rows), merged=table.merged + tuple(merged))
