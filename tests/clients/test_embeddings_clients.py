"""`/v1/embeddings` through the clients users point at it: the openai SDK's `embeddings.create`
(its default base64 encoding and floats) and LangChain's `OpenAIEmbeddings`."""

from __future__ import annotations

import numpy as np
import openai
import pytest
from langchain_openai import OpenAIEmbeddings
from live_server import ServerHandle

pytestmark = pytest.mark.slow

EMBEDDING_MODEL = "use-multilingual-v3"
SAME = (
    "服务器机房的温度应保持在十八到二十七摄氏度之间。",
    "The server room must be kept between 18 and 27 degrees Celsius.",
)
OTHER = "Employees get fifteen days of paid annual leave."


def test_openai_embeddings_create(server: ServerHandle) -> None:
    client = openai.OpenAI(base_url=server.api_url, api_key="unused")
    response = client.embeddings.create(model=EMBEDDING_MODEL, input=[*SAME, OTHER])  # base64 on the wire
    assert response.model == EMBEDDING_MODEL
    assert [d.index for d in response.data] == [0, 1, 2]
    vectors = np.array([d.embedding for d in response.data])
    assert vectors.shape == (3, 512)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # A sentence and its translation are closer than an unrelated sentence (a real model, not noise).
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.1
    assert response.usage.prompt_tokens > 10 and response.usage.total_tokens == response.usage.prompt_tokens

    floats = client.embeddings.create(model=EMBEDDING_MODEL, input=SAME[0], encoding_format="float")
    assert np.allclose(floats.data[0].embedding, vectors[0], atol=1e-5)


def test_openai_embeddings_errors(server: ServerHandle) -> None:
    client = openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=EMBEDDING_MODEL, input="x", dimensions=256)
    with pytest.raises(openai.BadRequestError):  # token ids: another model's tokenizer made them
        client.embeddings.create(model=EMBEDDING_MODEL, input=[[1, 2, 3]])


def test_langchain_openai_embeddings(server: ServerHandle) -> None:
    # check_embedding_ctx_length=False: LangChain sends the texts, not OpenAI's token ids
    embeddings = OpenAIEmbeddings(
        model=EMBEDDING_MODEL, base_url=server.api_url, api_key="unused", check_embedding_ctx_length=False
    )
    documents = embeddings.embed_documents([*SAME, OTHER])
    query = embeddings.embed_query("机房温度要求是多少？")
    assert len(documents) == 3 and all(len(v) == 512 for v in documents)
    scores = np.array(documents) @ np.array(query)
    assert int(np.argmax(scores)) in (0, 1)
