"""Logs: a line per task transition with the task id, never the prompt at INFO; JSON lines on
request."""

import json
import logging
import sys

from fluxhost.logs import JsonLines
from tests.helpers import ProtocolClient


def test_every_transition_is_a_log_line_with_the_task_id_and_no_prompt(server, client: ProtocolClient, caplog):
    caplog.set_level(logging.INFO)
    taskid = int(client.run(prompt="a secret garden at midnight")["taskid"])
    client.wait(str(taskid))
    transitions = [record.status for record in caplog.records if getattr(record, "task_id", None) == taskid]
    assert transitions == ["task_queue", "task_accept", "task_preprocess_start", "task_preprocess_end",
                           "task_assign", "task_start", "task_end", "task_postprocess_start", "task_postprocess_end"]
    assert not any("secret garden" in record.getMessage() for record in caplog.records)


def test_json_lines_carry_the_task_fields_and_exceptions():
    record = logging.LogRecord("fluxhost.runtime.worker", logging.INFO, __file__, 1, "task %s %s", (7, "task_start"),
                               None)
    record.task_id, record.status = 7, "task_start"
    line = json.loads(JsonLines().format(record))
    assert line["message"] == "task 7 task_start" and line["task_id"] == 7 and line["status"] == "task_start"
    assert line["level"] == "INFO" and line["logger"] == "fluxhost.runtime.worker" and line["time"].endswith("+00:00")
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("fluxhost", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(JsonLines().format(failed))["exception"]
