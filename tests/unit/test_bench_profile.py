"""bench.profile: py-spy's collapsed stacks folded into functions and areas (the report's
"Where the time goes" tables)."""

from __future__ import annotations

from pathlib import Path

import bench.profile
from bench.profile import area_of, function_name, summarize

ROOT = Path(bench.profile.__file__).resolve().parents[1]  # wherever the checkout is
SP = f"{ROOT}/.venv/lib/python3.11/site-packages"
RAW = f"""\
run ({ROOT}/streams/engine/position.py:300);model_validate_json ({SP}/pydantic/main.py:712) 6
run ({ROOT}/streams/engine/position.py:300);_decode ({ROOT}/streams/engine/pipeline.py:90) 3
select (/root/.pyenv/versions/3.11.7/lib/python3.11/selectors.py:468) 1
not a sample line
"""


def test_self_time_is_charged_to_the_innermost_frame_and_summed_per_function_and_area():
    got = summarize(RAW)
    assert got["samples"] == 10
    assert got["functions"] == [("model_validate_json (pydantic/main.py)", 0.6),
                                ("_decode (streams/engine/pipeline.py)", 0.3), ("select (selectors.py)", 0.1)]
    assert dict(got["areas"]) == {"validation (pydantic)": 0.6, "engine": 0.3, "other": 0.1}


def test_names_keep_the_library_path_and_drop_line_numbers():
    assert function_name(f"send ({SP}/aiokafka/producer/producer.py:12)") == "send (aiokafka/producer/producer.py)"
    assert area_of(f"send ({SP}/aiokafka/producer/producer.py:12)") == "Kafka client (aiokafka)"
    assert function_name("<lambda> (<string>:1)") == "<lambda> (<string>)"
    assert summarize("") == {"samples": 0, "rate_hz": 100, "functions": [], "areas": []}
