"""Built-in readers and writers: lists, CSV, JSON Lines, fixed-width files and SQL tables.

Every one is an ItemStream (``open(ctx)``, ``update(ctx)``, ``close()``; writers also
``complete(ctx)``) and restartable: it keeps its position in the step's ExecutionContext
under its own prefix, its class name or ``name=``. File paths may be templates filled from
the job parameters (``"out/report_{date:%Y%m%d}.csv"``), kept under their fixed leading
directory unless the job trusts a parameter (``trusted_path``). This package imports only
``batchd.model``, ``batchd.errors`` and ``batchd.interfaces``.
"""

from typing import TYPE_CHECKING

from batchd.lazy import lazy_attributes

if TYPE_CHECKING:
    from batchd.items.aggregators import FileAggregator
    from batchd.items.base import ItemReader, ItemStream, ItemWriter
    from batchd.items.composite import CompositeItemProcessor, CompositeItemWriter
    from batchd.items.csv_items import CsvItemReader, CsvItemWriter
    from batchd.items.file_moves import ArchiveFiles, CopyFiles, MoveFiles
    from batchd.items.files import FileItemReader, FileItemWriter, RestartableOutput
    from batchd.items.fixed_width import Column, FixedWidthItemReader, FixedWidthItemWriter
    from batchd.items.jsonl import JsonLinesItemReader, JsonLinesItemWriter
    from batchd.items.list_reader import ListItemReader
    from batchd.items.partitioners import (
        FileGlobPartitioner,
        FileLinePartitioner,
        SqlKeyRangePartitioner,
    )
    from batchd.items.paths import allow_input_directory, resolve_path, trusted_path
    from batchd.items.sql_items import SqlItemReader, SqlItemWriter

# Each name is imported from its module when first used: the daemon imports batchd.items.paths
# (and so this package) without needing the readers and writers, their csv, tarfile and SQL
# modules staying in its memory.
_HOMES = {
    "ArchiveFiles": "batchd.items.file_moves",
    "Column": "batchd.items.fixed_width",
    "CompositeItemProcessor": "batchd.items.composite",
    "CompositeItemWriter": "batchd.items.composite",
    "CopyFiles": "batchd.items.file_moves",
    "CsvItemReader": "batchd.items.csv_items",
    "CsvItemWriter": "batchd.items.csv_items",
    "FileAggregator": "batchd.items.aggregators",
    "FileGlobPartitioner": "batchd.items.partitioners",
    "FileItemReader": "batchd.items.files",
    "FileItemWriter": "batchd.items.files",
    "FileLinePartitioner": "batchd.items.partitioners",
    "FixedWidthItemReader": "batchd.items.fixed_width",
    "FixedWidthItemWriter": "batchd.items.fixed_width",
    "ItemReader": "batchd.items.base",
    "ItemStream": "batchd.items.base",
    "ItemWriter": "batchd.items.base",
    "JsonLinesItemReader": "batchd.items.jsonl",
    "JsonLinesItemWriter": "batchd.items.jsonl",
    "ListItemReader": "batchd.items.list_reader",
    "MoveFiles": "batchd.items.file_moves",
    "RestartableOutput": "batchd.items.files",
    "SqlItemReader": "batchd.items.sql_items",
    "SqlItemWriter": "batchd.items.sql_items",
    "SqlKeyRangePartitioner": "batchd.items.partitioners",
    "allow_input_directory": "batchd.items.paths",
    "resolve_path": "batchd.items.paths",
    "trusted_path": "batchd.items.paths",
}
__getattr__ = lazy_attributes(__name__, _HOMES, globals())

__all__ = [
    "ArchiveFiles",
    "Column",
    "CompositeItemProcessor",
    "CompositeItemWriter",
    "CopyFiles",
    "CsvItemReader",
    "CsvItemWriter",
    "FileAggregator",
    "FileGlobPartitioner",
    "FileItemReader",
    "FileItemWriter",
    "FileLinePartitioner",
    "FixedWidthItemReader",
    "FixedWidthItemWriter",
    "ItemReader",
    "ItemStream",
    "ItemWriter",
    "JsonLinesItemReader",
    "JsonLinesItemWriter",
    "ListItemReader",
    "MoveFiles",
    "RestartableOutput",
    "SqlItemReader",
    "SqlItemWriter",
    "SqlKeyRangePartitioner",
    "allow_input_directory",
    "resolve_path",
    "trusted_path",
]
