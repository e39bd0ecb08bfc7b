"""Built-in readers and writers: lists, CSV, JSON Lines, fixed-width files and SQL tables.

Every one is an ItemStream (``open(ctx)``, ``update(ctx)``, ``close()``; writers also
``complete(ctx)``) and restartable: it keeps its position in the step's ExecutionContext
under its own prefix, its class name or ``name=``. File paths may be templates filled from
the job parameters (``"out/report_{date:%Y%m%d}.csv"``), kept under their fixed leading
directory unless the job trusts a parameter (``trusted_path``). This package imports only
``batchd.model``, ``batchd.errors`` and ``batchd.interfaces``.
"""

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
