"""HFS+ B-trees (TN1150 "B-Trees"): build a whole tree from sorted records, and parse nodes.

A tree file is an array of fixed-size nodes: node 0 is the header node (header record, user
data record, allocation map record), then map nodes when the header's map is too small, then
leaf nodes linked left to right, then index levels up to the root. Each node ends with the
offsets of its records, last record first, preceded by the offset of its free space.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pool.errors import ImageCorruptError

from .hfsplus_format import (
    HEADER_MAP_OFFSET,
    HEADER_RECORD,
    NODE_DESCRIPTOR,
    NODE_HEADER,
    NODE_INDEX,
    NODE_LEAF,
    NODE_MAP,
)


@dataclass
class BTreeSpec:
    """The fixed properties of one tree (catalog, extents overflow or attributes)."""

    node_bytes: int
    max_key_bytes: int
    attributes: int  #: kBTBigKeysMask, kBTVariableIndexKeysMask
    key_compare_type: int = 0

    @property
    def variable_index_keys(self) -> bool:
        return bool(self.attributes & 0x4)


def _node(kind: int, height: int, records: list[bytes], node_bytes: int, flink: int = 0, blink: int = 0) -> bytes:
    body = bytearray(NODE_DESCRIPTOR.pack(flink, blink, kind, height, len(records), 0))
    offsets = []
    for r in records:
        offsets.append(len(body))
        body += r
    offsets.append(len(body))
    tail = b"".join(struct.pack(">H", o) for o in reversed(offsets))
    if len(body) + len(tail) > node_bytes:
        raise AssertionError("B-tree node overflow")
    return bytes(body) + bytes(node_bytes - len(body) - len(tail)) + tail


def _pack(records: list[bytes], node_bytes: int) -> list[list[bytes]]:
    """Greedy packing of records (each plus its 2-byte offset) into nodes."""
    room = node_bytes - NODE_DESCRIPTOR.size - 2
    groups: list[list[bytes]] = []
    cur: list[bytes] = []
    used = 0
    for r in records:
        need = len(r) + 2
        if cur and used + need > room:
            groups.append(cur)
            cur, used = [], 0
        cur.append(r)
        used += need
    if cur:
        groups.append(cur)
    return groups


def _map_bits(total_nodes: int, node_bytes: int) -> tuple[int, int]:
    """(bits in the header's map record, map nodes needed for *total_nodes*)."""
    header_bits = (node_bytes - HEADER_MAP_OFFSET - 8) * 8
    per_map = (node_bytes - 20) * 8
    extra = max(0, total_nodes - header_bits)
    return header_bits, -(-extra // per_map)


def build_btree(spec: BTreeSpec, records: list[tuple[bytes, bytes]], *, min_nodes: int = 1) -> list[bytes]:
    """All nodes of a B-tree holding *records*.

    Args:
        spec: node size, key limits and attributes.
        records: ``(key, data)`` pairs already in the tree's key order; keys start with their
            2-byte keyLength; data is padded to an even length here.
        min_nodes: the smallest node count of the file (rounds the file up to whole
            allocation blocks).

    Returns:
        the nodes, each ``spec.node_bytes`` long; node 0 is the header node.
    """
    nb = spec.node_bytes
    leaf_recs = [k + d + (b"\0" if len(d) % 2 else b"") for k, d in records]
    levels: list[list[list[bytes]]] = []  # levels[0] = leaves, each a list of node record lists
    first_keys: list[list[bytes]] = []
    if leaf_recs:
        groups = _pack(leaf_recs, nb)
        levels.append(groups)
        keys_iter = iter(k for k, _ in records)
        fk: list[bytes] = []
        for g in groups:
            fk.append(next(keys_iter))
            for _ in range(len(g) - 1):
                next(keys_iter)
        first_keys.append(fk)
        while len(levels[-1]) > 1:
            index_recs_keys = []
            for key in first_keys[-1]:
                if not spec.variable_index_keys:
                    key = struct.pack(">H", spec.max_key_bytes) + key[2:].ljust(spec.max_key_bytes, b"\0")
                index_recs_keys.append(key)
            # child numbers are filled in later; reserve 4 bytes per record now
            groups = _pack([k + b"\0\0\0\0" for k in index_recs_keys], nb)
            levels.append(groups)
            fk = []
            i = 0
            for g in groups:
                fk.append(first_keys[-1][i])
                i += len(g)
            first_keys.append(fk)
    used = 1 + sum(len(lv) for lv in levels)
    total = max(used, min_nodes)
    while True:
        header_bits, n_map = _map_bits(total, nb)
        if max(used + n_map, min_nodes) <= total:
            break
        total = used + n_map
    # node numbers: 0 header, 1..n_map map nodes, then leaves, then each index level
    numbers: list[list[int]] = []
    nxt = 1 + n_map
    for lv in levels:
        numbers.append(list(range(nxt, nxt + len(lv))))
        nxt += len(lv)
    nodes: list[bytes] = [b""] * total
    leaf_count = len(records)
    for depth, lv in enumerate(levels):
        nums = numbers[depth]
        gi = 0  # index records of this level map 1:1 onto the nodes of the level below
        for j, recs in enumerate(lv):
            if depth > 0:
                recs = [r[:-4] + struct.pack(">I", numbers[depth - 1][gi + t]) for t, r in enumerate(recs)]
            gi += len(recs)
            flink = nums[j + 1] if j + 1 < len(nums) else 0
            blink = nums[j - 1] if j > 0 else 0
            kind = NODE_LEAF if depth == 0 else NODE_INDEX
            nodes[nums[j]] = _node(kind, depth + 1, recs, nb, flink, blink)
    per_map = nb - 20
    bitmap = bytearray(header_bits // 8 + n_map * per_map)
    for n in range(used + n_map):
        bitmap[n // 8] |= 0x80 >> (n % 8)
    root = numbers[-1][0] if levels else 0
    header = HEADER_RECORD.pack(
        len(levels),
        root,
        leaf_count,
        numbers[0][0] if levels else 0,
        numbers[0][-1] if levels else 0,
        nb,
        spec.max_key_bytes,
        total,
        total - used - n_map,
        0,
        nb * total,
        0,
        spec.key_compare_type,
        spec.attributes,
        bytes(64),
    )
    hdr_map = bytes(bitmap[: header_bits // 8])
    nodes[0] = _node(NODE_HEADER, 0, [header, bytes(128), hdr_map], nb, flink=1 if n_map else 0)
    for m in range(n_map):
        part = bytes(bitmap[header_bits // 8 + m * per_map : header_bits // 8 + (m + 1) * per_map])
        nodes[1 + m] = _node(NODE_MAP, 0, [part], nb, flink=2 + m if m + 1 < n_map else 0)
    for n in range(used + n_map, total):
        nodes[n] = bytes(nb)
    return nodes


@dataclass
class Node:
    """A parsed node: its descriptor and its records as byte strings."""

    number: int
    flink: int
    kind: int
    height: int
    records: list[bytes]


def parse_node(raw: bytes, number: int, tree: str) -> Node:
    """Split a node into its records.

    Raises:
        ImageCorruptError: the record offsets are out of order or out of the node.
    """
    flink, _blink, kind, height, n, _r = NODE_DESCRIPTOR.unpack_from(raw)
    size = len(raw)
    if NODE_DESCRIPTOR.size + 2 * (n + 1) > size:
        raise ImageCorruptError(f"{tree} B-tree node {number}: {n} records cannot fit")
    offs = [struct.unpack_from(">H", raw, size - 2 * (i + 1))[0] for i in range(n + 1)]
    limit = size - 2 * (n + 1)
    for a, b in zip(offs, offs[1:], strict=False):
        if not (NODE_DESCRIPTOR.size <= a < b <= limit):
            raise ImageCorruptError(f"{tree} B-tree node {number}: record offsets are damaged")
    return Node(number, flink, kind, height, [raw[offs[i] : offs[i + 1]] for i in range(n)])


@dataclass
class HeaderInfo:
    depth: int
    root: int
    leaf_records: int
    first_leaf: int
    last_leaf: int
    node_bytes: int
    max_key_bytes: int
    total_nodes: int
    free_nodes: int
    key_compare_type: int
    attributes: int


def parse_header(raw: bytes, tree: str) -> HeaderInfo:
    """The header record of a tree's node 0.

    Raises:
        ImageCorruptError: node 0 is not a header node.
    """
    _f, _b, kind, _h, _n, _r = NODE_DESCRIPTOR.unpack_from(raw)
    if kind != NODE_HEADER:
        raise ImageCorruptError(f"{tree} B-tree: node 0 is not a header node")
    (depth, root, leaf_recs, first, last, node_bytes, max_key, total, free, _r1, _clump, _bt, kct, attrs, _r3) = (
        HEADER_RECORD.unpack_from(raw, NODE_DESCRIPTOR.size)
    )
    if node_bytes < 512 or node_bytes & (node_bytes - 1):
        raise ImageCorruptError(f"{tree} B-tree: node size {node_bytes} is invalid")
    return HeaderInfo(depth, root, leaf_recs, first, last, node_bytes, max_key, total, free, kct, attrs)
