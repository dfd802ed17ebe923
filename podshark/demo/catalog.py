"""The demo shop's data, shared by the api (products), inventory (stock) and loadgen (what to ask for).

Kept in one place so the traffic mix and the servers agree on which ids exist: the loadgen asks for
known products, an unknown one (404), the one whose handler has a "bug" (500), a known and an
unknown SKU (gRPC OK and NOT_FOUND), and the slow endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Product:
    id: int
    name: str
    price_cents: int

    @property
    def sku(self) -> str:
        return sku_of(self.id)


def sku_of(product_id: int) -> str:
    return f"SKU-{product_id:04d}"


_NAMES = (
    "espresso beans",
    "pour-over kettle",
    "burr grinder",
    "ceramic dripper",
    "paper filters",
    "milk frother",
    "travel mug",
    "scale",
    "cold brew jar",
    "tamper",
    "knock box",
    "descaler",
)

PRODUCTS: dict[int, Product] = {i: Product(i, name, 450 + 137 * i) for i, name in enumerate(_NAMES, start=1)}

#: stock per SKU; product 12's SKU is deliberately missing, so asking inventory for it is NOT_FOUND
STOCK: dict[str, int] = {sku_of(i): (i * 7) % 23 for i in PRODUCTS if i != 12}
WAREHOUSE = "ams-1"

#: the product whose api handler fails with a 500 ("a bug in production"), always
BROKEN_PRODUCT = 7
#: an id the api does not know (404) and a SKU inventory does not know (NOT_FOUND)
UNKNOWN_PRODUCT = 42
UNKNOWN_SKU = "SKU-9999"
