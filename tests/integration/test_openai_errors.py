"""The official `openai` SDK, unmodified, against the gateway in-process (its ASGI app): every
refusal on the files and fine-tuning routes reaches the SDK in OpenAI's error shape, so the SDK
raises its own exception type with the server's message in it (not a bare "Error code: 422"),
the field at fault in `param`; the text routes refuse what they do not honour the same way."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import httpx2
import pytest
from openai import (
    AsyncOpenAI,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    UnprocessableEntityError,
)

from service.settings import Settings
from tests.conftest import ADMIN_KEY
from tests.ft_data import jsonl, rows
from tests.integration.ft_helpers import job_body, setup_classifier
from tests.integration.tenancy import new_key, new_tenant

DATASET_LIMIT = 64 << 10


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_dataset_bytes": DATASET_LIMIT})


@pytest.fixture
async def sdk(client: httpx.AsyncClient) -> AsyncIterator[object]:
    """`sdk(key)`: an AsyncOpenAI on the in-process app."""
    opened: list[httpx2.AsyncClient] = []

    def make(key: str = ADMIN_KEY) -> AsyncOpenAI:
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=client.app))  # type: ignore[attr-defined]
        opened.append(http)
        return AsyncOpenAI(base_url="http://kiln/v1", api_key=key, max_retries=0, http_client=http)

    yield make
    for http in opened:
        await http.aclose()


def _says(exc: Exception, *fragments: str) -> None:
    message = str(exc)
    assert all(f in message for f in fragments), message


async def test_refused_uploads_reach_the_sdk_with_the_servers_message(sdk) -> None:  # type: ignore[no-untyped-def]
    client: AsyncOpenAI = sdk()
    bad = b'{"input": [1, 2, 3, 4], "label": 0}\n{"input": [1, 2], "label": 1}\nnot json\n'
    with pytest.raises(UnprocessableEntityError) as refused:
        await client.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    _says(refused.value, "Error code: 422 - dataset is invalid", "line 2")
    assert refused.value.param == "file" and refused.value.code == "invalid_dataset"
    report = refused.value.body["report"]  # type: ignore[index]
    assert [e["line"] for e in report["errors"]] == [2, 3]

    with pytest.raises(UnprocessableEntityError) as refused:
        await client.files.create(file=("ok.jsonl", jsonl(*rows(8, 1))), purpose="batch")
    _says(refused.value, "purpose must be 'fine-tune'")
    assert refused.value.param == "purpose"

    huge = b'{"input": [1, 2, 3, 4], "label": 0}\n' * (2 * DATASET_LIMIT // 36)
    with pytest.raises(Exception) as too_big:
        await client.files.create(file=("huge.jsonl", huge), purpose="fine-tune")
    assert getattr(too_big.value, "status_code", None) == 413, too_big.value
    _says(too_big.value, "Error code: 413 -", "limit")

    with pytest.raises(NotFoundError) as missing:
        await client.files.retrieve("file-nope")
    _says(missing.value, "file 'file-nope' not found")
    assert missing.value.code == "not_found"  # a file: not OpenAI's model_not_found
    assert (await client.files.list()).data == []


async def test_refused_jobs_reach_the_sdk_with_the_servers_message(
    client: httpx.AsyncClient,
    sdk,  # type: ignore[no-untyped-def]
) -> None:
    train, valid = await setup_classifier(client)
    oai: AsyncOpenAI = sdk()
    with pytest.raises(NotFoundError) as missing:
        await oai.fine_tuning.jobs.create(model="nope", training_file=train)
    _says(missing.value, "'nope'", "not found")

    hp = {"n_epochs": "three"}
    with pytest.raises(UnprocessableEntityError) as refused:
        await oai.fine_tuning.jobs.create(
            model="clf",
            training_file=train,
            method={"type": "supervised", "supervised": {"hyperparameters": hp}},  # type: ignore[typeddict-item]
        )
    _says(refused.value, "n_epochs")
    with pytest.raises(UnprocessableEntityError) as refused:
        await oai.fine_tuning.jobs.create(model="clf", training_file=train, hyperparameters={"n_epochs": -1})
    _says(refused.value, "hyperparameters.n_epochs must be a positive integer")
    with pytest.raises(UnprocessableEntityError) as refused:
        await oai.fine_tuning.jobs.create(model="clf", training_file=train, extra_body={"code": "import os"})
    _says(refused.value, "code: Extra inputs are not permitted")
    assert refused.value.param == "code"

    job = await oai.fine_tuning.jobs.create(**job_body(train, valid))  # no trainer: it stays queued
    with pytest.raises(ConflictError) as conflict:
        await oai.files.delete(train)
    _says(conflict.value, "Error code: 409 -", job.id)
    assert (await oai.fine_tuning.jobs.cancel(job.id)).status == "cancelled"
    with pytest.raises(ConflictError) as conflict:
        await oai.fine_tuning.jobs.pause(job.id)
    _says(conflict.value, "job is cancelled")
    with pytest.raises(NotFoundError) as missing:
        await oai.fine_tuning.jobs.retrieve("ftjob-nope")
    _says(missing.value, "ftjob-nope")


async def test_keys_that_may_not_reach_the_sdk_with_the_reason(
    client: httpx.AsyncClient,
    sdk,  # type: ignore[no-untyped-def]
) -> None:
    with pytest.raises(AuthenticationError) as refused:
        await sdk("kiln_not_a_key").files.list()
    assert refused.value.code == "invalid_api_key" and "Error code: 401 - " in str(refused.value)
    _id, infer = await new_key(client, ["infer"])
    with pytest.raises(PermissionDeniedError) as refused:
        await sdk(infer["Authorization"].removeprefix("Bearer ")).fine_tuning.jobs.list()
    _says(refused.value, "lacks the 'finetune' scope")
    # another tenant's job is not there at all (404, as if it did not exist)
    train, valid = await setup_classifier(client)
    job = await sdk().fine_tuning.jobs.create(**job_body(train, valid))
    await new_tenant(client, "other")
    _oid, other = await new_key(client, ["finetune", "manage"], tenant="other")
    with pytest.raises(NotFoundError):
        await sdk(other["Authorization"].removeprefix("Bearer ")).fine_tuning.jobs.cancel(job.id)


async def test_text_routes_refuse_what_they_do_not_honour(client: httpx.AsyncClient, sdk) -> None:  # type: ignore[no-untyped-def]
    oai: AsyncOpenAI = sdk()
    messages = [{"role": "user", "content": "hi"}]
    for extra in ({"presence_penalty": 0.5}, {"tools": [{"type": "function", "function": {"name": "f"}}]}):
        with pytest.raises(BadRequestError) as refused:
            await oai.chat.completions.create(model="chat", messages=messages, **extra)  # type: ignore[arg-type, call-overload]
        (name,) = extra
        assert refused.value.param == name and f"{name} is not supported" in str(refused.value)
    with pytest.raises(BadRequestError) as refused:
        await oai.completions.create(model="chat", prompt="hi", best_of=3)
    assert refused.value.param == "best_of"
    with pytest.raises(BadRequestError) as refused:
        await oai.embeddings.create(model="chat", input="hi", extra_body={"truncate": True})
    assert refused.value.param == "truncate" and "unrecognized request argument" in str(refused.value)
    # the defaults, spelled out: past the body, the unknown model answers
    with pytest.raises(NotFoundError) as missing:
        await oai.chat.completions.create(
            model="chat",
            messages=messages,
            presence_penalty=0,
            logit_bias={},
            tools=[],
            n=1,  # type: ignore[arg-type]
        )
    assert missing.value.code == "model_not_found"
