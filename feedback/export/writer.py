"""The Parquet files of one config, written a row group at a time."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .schema import CONFIGS, ROW_GROUP_ROWS, SHARD_ROWS, _schema


class _Split:
    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0
        self.shards: list[Path] = []
        self.writer: pq.ParquetWriter | None = None


class ConfigWriter:
    """The Parquet files of one config: per split, shards of ``shard_rows`` rows written a row
    group of ``row_group_rows`` at a time as the chunks come, so memory holds one row group.
    Row groups are cut at fixed row counts, whatever the chunks were (the Parquet writer's
    pages do not depend on how a table is chunked): the bytes depend on the rows only.
    ``close`` names the shards ``<split>-NNNNN-of-NNNNN.parquet``."""

    def __init__(self, root: Path, config: str, *, row_group_rows: int = ROW_GROUP_ROWS,
                 shard_rows: int = SHARD_ROWS) -> None:
        if shard_rows % row_group_rows:
            raise ValueError("shard_rows must be a multiple of row_group_rows")
        self.folder = root / "data" / config
        self.schema = _schema(CONFIGS[config])
        self.row_group_rows, self.shard_rows = row_group_rows, shard_rows
        self.splits: dict[str, _Split] = {}

    def write(self, split: str, table: pa.Table) -> None:
        if not table.num_rows:
            return
        s = self.splits.setdefault(split, _Split())
        s.tables.append(table)
        s.buffered += table.num_rows
        while s.buffered >= self.row_group_rows:
            self._flush(split, s, self.row_group_rows)

    def _flush(self, split: str, s: _Split, n: int) -> None:
        whole = pa.concat_tables(s.tables) if s.tables else self.schema.empty_table()
        head, rest = whole.slice(0, n), whole.slice(n)
        s.tables = [rest] if rest.num_rows else []
        s.buffered -= n
        if s.writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{split}-{len(s.shards):05d}.parquet.part"
            s.shards.append(path)
            s.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
        if not n:  # an empty config: the file holds the columns and no row group
            return
        s.writer.write_table(head, row_group_size=n)
        s.rows += n
        if s.rows % self.shard_rows == 0:
            s.writer.close()
            s.writer = None
        del head, whole
        pa.default_memory_pool().release_unused()  # keep the process's memory flat

    def close(self) -> dict[str, int]:
        """Write what is left and name the files; rows per split. A config without rows gets
        one empty ``train`` file, so that it loads (with its columns) like the others."""
        if not self.splits:
            self.splits["train"] = _Split()
        for split, s in self.splits.items():
            if s.buffered or not s.shards:
                self._flush(split, s, s.buffered)
            if s.writer is not None:
                s.writer.close()
                s.writer = None
            for i, path in enumerate(s.shards):
                path.rename(self.folder / f"{split}-{i:05d}-of-{len(s.shards):05d}.parquet")
        return {split: s.rows for split, s in sorted(self.splits.items())}

    def abort(self) -> None:
        """Close open files (the folder is removed by the caller)."""
        for s in self.splits.values():
            if s.writer is not None:
                s.writer.close()
                s.writer = None
