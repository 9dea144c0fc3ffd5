"""Reads an OpenMetrics exposition from stdin with the Prometheus project's
strict parser and prints one JSON line per sample: name, labels, value,
and the family's type. Exits non-zero (with the parser's error) if the text
is not valid OpenMetrics."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        print(json.dumps({"family": family.name, "type": family.type, "name": sample.name,
                          "labels": sample.labels, "value": sample.value}))
