"""pointd relay: lossless Mercado Pago webhook intake and per-store delivery, plus its client."""
