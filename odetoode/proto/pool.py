"""The descriptor pool of the generated stubs (hand-written; the generated stubs register in it).

The stubs register their packages (`inference`, `odetoode`) in POOL rather than in protobuf's default pool, where
tritonclient registers its own, different definitions of the `inference` symbols: so both can be imported in one
process. Server reflection needs one pool with every service it describes: pass `pool=reflection_pool()` to
enable_server_reflection.
"""

from google.protobuf import descriptor, descriptor_database, descriptor_pb2, descriptor_pool

POOL = descriptor_pool.DescriptorPool()

_OWN_PACKAGES = ("inference", "odetoode")


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """A new pool that finds our packages in POOL and everything else in protobuf's default pool."""
    return descriptor_pool.DescriptorPool(_Union())


class _Union(descriptor_database.DescriptorDatabase):
    def FindFileByName(self, name: str) -> descriptor_pb2.FileDescriptorProto:  # noqa: N802 (protobuf's name)
        try:
            return _copy(POOL.FindFileByName(name))
        except KeyError:
            return _copy(_not_ours(descriptor_pool.Default().FindFileByName(name)))

    def FindFileContainingSymbol(self, symbol: str) -> descriptor_pb2.FileDescriptorProto:  # noqa: N802
        if symbol.split(".", 1)[0] in _OWN_PACKAGES:
            return _copy(POOL.FindFileContainingSymbol(symbol))
        return _copy(_not_ours(descriptor_pool.Default().FindFileContainingSymbol(symbol)))


def _not_ours(file: descriptor.FileDescriptor) -> descriptor.FileDescriptor:
    # Another library's `inference` files (tritonclient's) would clash with ours.
    if file.package.split(".", 1)[0] in _OWN_PACKAGES:
        raise KeyError(file.name)
    return file


def _copy(file: descriptor.FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return proto
