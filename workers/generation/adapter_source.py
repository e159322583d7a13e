"""The worker's side of serving LoRA adapters (no torch): a request on a base version's stream
that names an adapter (`GenRequestMsg.adapter`) gets the adapter bundle's bytes read here, from
the blob store, and handed to the engine with the request (over the fence's channel: the fenced
child reads its base's blob and nothing else of the store).

The stream is not trusted: the adapter must be a lora-adapter version of this very base, with
the digest the request names, not unloaded by command; its bytes are hashed as read (a blob
changed on disk is refused), and bounded in size.
"""

from __future__ import annotations

import hashlib

from model_store.blobs import BlobStore
from model_store.errors import StoreError
from model_store.lora_adapter import FORMAT
from model_store.registry import Registry, ResolvedVersion
from workers.contract.generation import AdapterRef, GenErrorCode
from workers.generation.backend import AdapterBytes, GenInputError

MAX_ADAPTER_BYTES = 1 << 30  # under the fence channel's frame limit (2 GiB); adapters are small
MAX_KNOWN = 10_000


class AdapterSource:
    def __init__(
        self, registry: Registry, blobs: BlobStore, unloaded: set[int], max_bytes: int = MAX_ADAPTER_BYTES
    ) -> None:
        self.registry = registry
        self.blobs = blobs
        self.unloaded = unloaded  # versions unloaded by command (lifecycle): not served
        self.max_bytes = max_bytes
        self._known: dict[int, ResolvedVersion] = {}

    def reader(self, base_id: int) -> AdapterBytes:
        """What reads an adapter's bytes for requests on the base `base_id`."""
        return lambda ref: self.read(ref, base_id)

    def refuse_unloaded(self, ref: AdapterRef) -> None:
        if ref.version_id in self.unloaded:
            raise GenInputError("this adapter is unloaded; load it first", GenErrorCode.UNAVAILABLE)

    def version(self, ref: AdapterRef, base_id: int) -> ResolvedVersion:
        """The adapter version `ref` names, if it is a servable adapter of `base_id` (else
        GenInputError). Every request passes this; the registry is read once per adapter (a
        version's format, digest and base never change), and again whenever its bytes are read."""
        self.refuse_unloaded(ref)
        found = self._known.get(ref.version_id)
        if found is None:
            try:
                found = self.registry.by_version_id(ref.version_id)
            except StoreError as exc:
                raise GenInputError("the adapter version no longer exists", GenErrorCode.LOAD_FAILED) from exc
            if len(self._known) >= MAX_KNOWN:
                self._known.clear()
            self._known[ref.version_id] = found
        if found.format != FORMAT or found.adapter_of != base_id or found.sha256 != ref.sha256:
            raise GenInputError("the adapter is not an adapter of this model", GenErrorCode.INVALID_INPUT)
        return found

    def read(self, ref: AdapterRef, base_id: int) -> bytes:
        self._known.pop(ref.version_id, None)  # loading: the registry is asked again
        self.version(ref, base_id)
        try:
            path = self.blobs.path_for(ref.sha256)
            with path.open("rb") as f:
                data = f.read(self.max_bytes + 1)
        except (OSError, StoreError) as exc:
            raise GenInputError(
                "the adapter's bytes are missing from the store", GenErrorCode.LOAD_FAILED
            ) from exc
        if len(data) > self.max_bytes:
            raise GenInputError("the adapter is too large to serve", GenErrorCode.LOAD_FAILED)
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise GenInputError(
                "the adapter's bytes do not match the sha256 recorded at registration",
                GenErrorCode.LOAD_FAILED,
            )
        return data
