"""RemoteEngine's request building and refusals (no server needed)."""

import pytest

from conveyor_hf.engines import RemoteEngine
from conveyor_hf.generator import ConveyorGenerator


def gen_for(tokenizer, **kw):
    return ConveyorGenerator(RemoteEngine("http://127.0.0.1:9/v1", model="m", **kw), tokenizer)


@pytest.mark.parametrize("bad", ["localhost:8000", "", None])
def test_base_url_must_be_an_http_url(bad):
    with pytest.raises(ValueError, match="must be an http"):
        RemoteEngine(bad, model="m")


def test_replay_is_refused_by_name(tokenizer):
    with pytest.raises(ValueError, match="replay= needs access to the logits"):
        gen_for(tokenizer).generate("Hi", replay=["x"])


@pytest.mark.parametrize("keyword", [{"top_k": 5}, {"repetition_penalty": 1.3}, {"logits_processor": []},
                                     {"num_beams": 2}])
def test_keywords_the_api_cannot_take_are_refused_by_name(tokenizer, keyword):
    [name] = keyword
    with pytest.raises(ValueError, match=f"{name}.* cannot be sent to a remote engine"):
        gen_for(tokenizer).generate("Hi", max_new_tokens=3, **keyword)


def test_generation_keywords_map_to_the_api(tokenizer):
    gen = gen_for(tokenizer, extra_body={"top_k": 20})
    config, extra = gen._generation_config(dict(do_sample=True, temperature=0.7, top_p=0.9, seed=3,
                                                stop=["\n\n"], max_new_tokens=40))

    class Loop:
        pass

    loop = Loop()
    loop.config, loop.extra = config, extra
    body = gen.engine.request_body(loop, "prompt", 40)
    assert body == {"model": "m", "prompt": "prompt", "max_tokens": 40, "stream": True, "temperature": 0.7,
                    "top_p": 0.9, "stop": ["\n\n"], "seed": 3, "top_k": 20}
    greedy_config, greedy_extra = gen._generation_config({})
    loop.config, loop.extra = greedy_config, greedy_extra
    assert gen.engine.request_body(loop, "p", 5)["temperature"] == 0.0
