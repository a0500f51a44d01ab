"""The UDF side of an ISO 9660 + UDF bridge image: where :mod:`imaging.udf_write` puts its parts.

Blocks (2048 bytes), next to the ISO 9660 layout of :mod:`imaging.iso_layout`:

* right after the ISO 9660 Volume Descriptor Set Terminator: the UDF Volume Recognition Sequence
  (3 blocks, ECMA-167 2/8.3), then the Main and Reserve Volume Descriptor Sequences (16 blocks
  each) and the Logical Volume Integrity Descriptor (2 blocks);
* block 256: the first Anchor Volume Descriptor Pointer (ECMA-167 3/8.4.2.1);
* from block 257: the ISO 9660 path tables, directories and Continuation Areas;
* then the partition, to the end of the file data: the UDF metadata area first (File Set
  Descriptor, File Entries, directories; pycdlib reads the File Set Descriptor at the partition
  start), the El Torito catalog, then the file data, which ISO 9660 and UDF share;
* the last block of the volume: the second anchor (:func:`imaging.iso_write.copy_udf_anchor`
  repeats it at the very end of the image).
"""

from __future__ import annotations

import os
from typing import Any

from .common import SourceTree
from .iso_layout import Builder, IsoPlan
from .udf_format import UdfLayout
from .udf_write import plan_udf, write_udf

BLOCK = 2048
ANCHOR = 256
_VRS, _VDS = 3, 16


class UdfPart:
    """The UDF structures of one image: plan first, blocks after the ISO layout, bytes last.

    Args:
        plan: the ISO plan (its tree complete: generated files and boot catalog added).
        tree: the walked tree; builder: the :class:`imaging.iso_layout.Builder` that made the
            UDF nodes along with the ISO ones; opts: the image options (volume name, epoch).

    Raises:
        UsageError: (from :meth:`__init__`) a name or file UDF cannot hold.
    """

    def __init__(self, plan: IsoPlan, tree: SourceTree, builder: Builder, opts: Any) -> None:
        from pool.errors import UsageError

        assert builder.udf_root is not None
        self.builder = builder
        self.opts = opts
        for unode, node in builder.udf_extra:
            if node.data is not None:
                unode.size = node.data.length
            elif node.fixed is not None:
                unode.size = BLOCK
        try:
            self.plan = plan_udf(builder.udf_root)
        except ValueError as e:
            raise UsageError(f"cannot lay out the UDF tree: {e}") from None
        self.meta_blocks = self.plan.blocks
        self.layout: UdfLayout | None = None
        self.vrs = 0

    def reserve(self, first: int) -> int:
        """Take the blocks from *first* (after the ISO terminator); returns where ISO goes on."""
        self.vrs = first
        end = first + _VRS + 2 * _VDS + 2
        if end > ANCHOR:
            raise ValueError("the volume descriptors do not fit before block 256")
        return ANCHOR + 1

    def finish(self, plan: IsoPlan) -> int:
        """Fix the UDF blocks once the ISO layout is done; returns the volume's size in blocks."""
        end = plan.volume_blocks + 1  # the last block holds the second anchor
        for unode, ext in self.builder.udf_files:
            unode.data_block = ext.block
        for unode, node in self.builder.udf_extra:
            if node.data is not None:
                unode.data_block = node.data.block
            elif node.fixed is not None:
                unode.data_block = node.fixed[0]
        start = plan.reserved_start  # pycdlib reads the File Set Descriptor at the partition start
        self.layout = UdfLayout(
            vrs=self.vrs,
            main_vds=self.vrs + _VRS,
            reserve_vds=self.vrs + _VRS + _VDS,
            lvid=self.vrs + _VRS + 2 * _VDS,
            partition_start=start,
            partition_blocks=end - 1 - start,
            meta_start=plan.reserved_start,
            anchors=(ANCHOR, end - 1),
        )
        self.build_time_s = plan.build_time_s
        return end

    def write(self, fd: int) -> None:
        """Write every UDF structure to the image open at *fd*."""
        assert self.layout is not None
        epoch = self.opts.source_date_epoch
        write_udf(
            self.plan,
            lambda data, offset: os.pwrite(fd, data, offset),
            self.layout,
            volume_id=self.opts.volume_name,
            build_time_ns=int(self.build_time_s) * 1_000_000_000,
            seed=epoch if epoch is not None else int(self.build_time_s),
        )
