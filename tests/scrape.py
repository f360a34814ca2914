"""Reading a service's real `/metrics` endpoint over HTTP, as Prometheus does.

`scrape(port)` parses the text exposition with prometheus_client's own parser. `families` holds
every declared family (its `# TYPE` line appears as soon as the metric is registered, before any
sample), `value()` one sample's current value, or None when that series is not exported.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass(frozen=True)
class Scrape:
    text: str
    families: dict[str, str]  # family name -> type
    samples: list[Sample]

    @property
    def sample_names(self) -> set[str]:
        return {sample.name for sample in self.samples}

    @property
    def exported_names(self) -> set[str]:
        """Every name a PromQL expression may use against this endpoint: each family's samples'
        names, whether or not a sample exists yet (`<counter>_total`, `<histogram>_bucket`, ...)."""
        names = set(self.sample_names)
        for family, kind in self.families.items():
            if kind == "counter":
                names |= {f"{family}_total", f"{family}_created"}
            elif kind == "histogram":
                names |= {f"{family}{suffix}" for suffix in ("_bucket", "_count", "_sum", "_created")}
            else:
                names.add(family)
        return names

    def value(self, name: str, **labels: str) -> float | None:
        for sample in self.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
        return None


def parse(text: str) -> Scrape:
    families: dict[str, str] = {}
    samples: list[Sample] = []
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        samples.extend(family.samples)
    return Scrape(text, families, samples)


async def scrape(port: int, host: str = "127.0.0.1") -> Scrape:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as http:
        response = await http.get(f"http://{host}:{port}/metrics")
    response.raise_for_status()
    return parse(response.text)
