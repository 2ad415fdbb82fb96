"""The cashier prompts catalogue: sale states, refusals, notices, lane conditions and refunds.

Each prompt is up to four lines of at most ``DISPLAY_WIDTH`` characters. Lines 1 and 2 carry
the whole message, so a 2x20 display loses nothing essential; lines 3 and 4 add detail for
4x20 displays. Text is upper-case ASCII without accents, because many register and pole
displays have no code page for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pointd.core.effects import Notice
from pointd.core.states import LaneCondition, Refusal, SaleState
from pointd.register.messages import Severity

DISPLAY_WIDTH = 20
LANGUAGES = ("es", "pt", "en")
DEFAULT_LANGUAGE = "es"



class RefundScreen(StrEnum):
    """What the register shows about one refund (chosen by the session from its standing)."""

    PROCESSING = "refund_processing"  # sent, or being sent, to Mercado Pago
    CHECKING = "refund_checking"  # outcome unknown: resending with the same key
    ON_TERMINAL = "refund_on_terminal"  # a refund intent waits: complete it on the terminal
    DONE = "refund_done"
    FAILED = "refund_failed"  # Mercado Pago refused or failed it: nothing refunded
    OVER_AMOUNT = "refund_over_amount"  # refused: more than was paid (minus refunds)
    NOTHING_LEFT = "refund_nothing_left"  # refused: already refunded in full
    NOT_REFUNDABLE = "refund_not_refundable"  # refused: the sale has no verified payment
    INVALID_AMOUNT = "refund_invalid_amount"


Subject = SaleState | Refusal | Notice | LaneCondition | RefundScreen

INFO, WARN, ERROR = Severity.INFO, Severity.WARN, Severity.ERROR


@dataclass(frozen=True)
class Prompt:
    """What the register shows for one subject in one language."""

    lines: tuple[str, ...]
    severity: Severity


_Entry = tuple[Severity, tuple[str, ...], tuple[str, ...], tuple[str, ...]]

# subject -> severity, then one tuple of lines per language in LANGUAGES order. One table
# per enum: the enums are StrEnums and some values coincide ("terminal_not_connected"), so
# a shared dict would silently merge a refusal with a lane condition.
_STATES: dict[SaleState, _Entry] = {
    SaleState.REQUESTED: (
        INFO,
        ("PAGO CON TARJETA", "PREPARANDO..."),
        ("PAGAMENTO CARTAO", "PREPARANDO..."),
        ("CARD PAYMENT", "PREPARING..."),
    ),
    SaleState.CREATING: (
        INFO,
        ("PAGO CON TARJETA", "ENVIANDO A TERMINAL"),
        ("PAGAMENTO CARTAO", "ENVIANDO AO TERMINAL"),
        ("CARD PAYMENT", "SENDING TO TERMINAL"),
    ),
    SaleState.CREATE_UNKNOWN: (
        WARN,
        ("VERIFICANDO ENVIO", "AGUARDE", "NO REPITA EL COBRO"),
        ("VERIFICANDO ENVIO", "AGUARDE", "NAO REPITA COBRANCA"),
        ("CHECKING REQUEST", "PLEASE WAIT", "DO NOT CHARGE AGAIN"),
    ),
    SaleState.OPEN: (
        INFO,
        ("PASE LA TARJETA", "EN LA TERMINAL"),
        ("USE O CARTAO", "NO TERMINAL"),
        ("PRESENT CARD", "AT THE TERMINAL"),
    ),
    SaleState.ON_TERMINAL: (
        INFO,
        ("CLIENTE EN TERMINAL", "AGUARDE"),
        ("CLIENTE NO TERMINAL", "AGUARDE"),
        ("CUSTOMER AT TERMINAL", "PLEASE WAIT"),
    ),
    SaleState.PROCESSING: (
        INFO,
        ("PROCESANDO PAGO", "AGUARDE"),
        ("PROCESSANDO", "AGUARDE"),
        ("PROCESSING PAYMENT", "PLEASE WAIT"),
    ),
    SaleState.VERIFYING: (
        INFO,
        ("VERIFICANDO PAGO", "NO ENTREGUE AUN"),
        ("VERIFICANDO PAGTO", "NAO ENTREGUE AINDA"),
        ("VERIFYING PAYMENT", "DO NOT HAND OVER YET"),
    ),
    SaleState.HELD: (
        WARN,
        ("VERIFICANDO PAGO", "NO ENTREGUE"),
        ("VERIFICANDO PAGTO", "NAO ENTREGUE"),
        ("VERIFYING PAYMENT", "DO NOT HAND OVER"),
    ),
    SaleState.ESCALATED: (
        ERROR,
        ("PAGO SIN CONFIRMAR", "LLAME AL SUPERVISOR", "NO ENTREGUE"),
        ("PAGTO NAO CONFIRMADO", "CHAME O SUPERVISOR", "NAO ENTREGUE"),
        ("PAYMENT UNCONFIRMED", "CALL SUPERVISOR", "DO NOT HAND OVER"),
    ),
    SaleState.CANCELING: (
        INFO,
        ("CANCELANDO PAGO", "AGUARDE"),
        ("CANCELANDO PAGTO", "AGUARDE"),
        ("CANCELING PAYMENT", "PLEASE WAIT"),
    ),
    SaleState.APPROVED: (
        INFO,
        ("PAGO APROBADO", "ENTREGUE"),
        ("PAGTO APROVADO", "PODE ENTREGAR"),
        ("PAYMENT APPROVED", "HAND OVER GOODS"),
    ),
    SaleState.BLOCKED: (
        ERROR,
        ("PAGO BLOQUEADO", "NO ENTREGUE", "LLAME AL SUPERVISOR"),
        ("PAGTO BLOQUEADO", "NAO ENTREGUE", "CHAME O SUPERVISOR"),
        ("PAYMENT BLOCKED", "DO NOT HAND OVER", "CALL SUPERVISOR"),
    ),
    SaleState.HANDED_OVER: (
        INFO,
        ("VENTA FINALIZADA", "GRACIAS"),
        ("VENDA FINALIZADA", "OBRIGADO"),
        ("SALE COMPLETE", "THANK YOU"),
    ),
    SaleState.DECLINED: (
        ERROR,
        ("PAGO RECHAZADO", "NO ENTREGUE"),
        ("PAGTO RECUSADO", "NAO ENTREGUE"),
        ("PAYMENT DECLINED", "DO NOT HAND OVER"),
    ),
    SaleState.CANCELED: (
        WARN,
        ("PAGO CANCELADO", "NO SE COBRO"),
        ("PAGTO CANCELADO", "NADA FOI COBRADO"),
        ("PAYMENT CANCELED", "NOTHING CHARGED"),
    ),
    SaleState.FAILED: (
        ERROR,
        ("ERROR EN EL PAGO", "NO SE COBRO"),
        ("ERRO NO PAGAMENTO", "NADA FOI COBRADO"),
        ("PAYMENT ERROR", "NOTHING CHARGED"),
    ),
    SaleState.ABANDONED: (
        WARN,
        ("PAGO NO REALIZADO", "TIEMPO AGOTADO"),
        ("PAGTO NAO REALIZADO", "TEMPO ESGOTADO"),
        ("PAYMENT NOT MADE", "TIMED OUT"),
    ),
    SaleState.OVERRIDDEN: (
        WARN,
        ("AUTORIZADO POR", "SUPERVISOR", "ENTREGUE"),
        ("AUTORIZADO PELO", "SUPERVISOR", "PODE ENTREGAR"),
        ("RELEASED BY", "SUPERVISOR", "HAND OVER GOODS"),
    ),
    SaleState.HANDOVER_UNCONFIRMED: (
        WARN,
        ("VENTA CERRADA", "ENTREGA NO CONFIRM.", "AVISE AL TECNICO"),
        ("VENDA ENCERRADA", "ENTREGA NAO CONFIRM.", "AVISE O TECNICO"),
        ("SALE CLOSED", "HANDOVER UNCONFIRMED", "TELL THE TECHNICIAN"),
    ),
}

_REFUSALS: dict[Refusal, _Entry] = {
    Refusal.LANE_BUSY: (
        WARN,
        ("CAJA OCUPADA", "TERMINE LA VENTA"),
        ("CAIXA OCUPADO", "TERMINE A VENDA"),
        ("LANE BUSY", "FINISH CURRENT SALE"),
    ),
    Refusal.TERMINAL_UNKNOWN: (
        ERROR,
        ("TERMINAL NO ASIGNADA", "LLAME AL TECNICO"),
        ("TERMINAL NAO CONFIG.", "CHAME O TECNICO"),
        ("NO TERMINAL SET UP", "CALL TECHNICIAN"),
    ),
    Refusal.TERMINAL_NOT_CONNECTED: (
        ERROR,
        ("TERMINAL DESCONECT.", "REVISE EL CABLE"),
        ("TERMINAL DESCONECT.", "VERIFIQUE O CABO"),
        ("TERMINAL UNPLUGGED", "CHECK THE CABLE"),
    ),
    Refusal.TERMINAL_NOT_PDV: (
        ERROR,
        ("TERMINAL SIN MODO", "INTEGRADO (PDV)", "LLAME AL TECNICO"),
        ("TERMINAL SEM MODO", "INTEGRADO (PDV)", "CHAME O TECNICO"),
        ("TERMINAL NOT IN", "PDV MODE", "CALL TECHNICIAN"),
    ),
    Refusal.TERMINAL_BUSY: (
        WARN,
        ("TERMINAL OCUPADA", "ESPERE E INTENTE"),
        ("TERMINAL OCUPADO", "AGUARDE E REPITA"),
        ("TERMINAL BUSY", "WAIT AND RETRY"),
    ),
    Refusal.CLOUD_UNAVAILABLE: (
        ERROR,
        ("PAGO CON TARJETA", "NO DISPONIBLE", "SIN CONEXION"),
        ("PAGAMENTO CARTAO", "INDISPONIVEL", "SEM CONEXAO"),
        ("CARD PAYMENTS", "UNAVAILABLE", "NO CONNECTION"),
    ),
    Refusal.AMOUNT_OUT_OF_RANGE: (
        WARN,
        ("MONTO NO PERMITIDO", "REVISE EL IMPORTE"),
        ("VALOR NAO PERMITIDO", "VERIFIQUE O VALOR"),
        ("AMOUNT NOT ALLOWED", "CHECK THE AMOUNT"),
    ),
    Refusal.INVALID_REQUEST: (
        ERROR,
        ("PEDIDO INVALIDO", "LLAME AL TECNICO"),
        ("PEDIDO INVALIDO", "CHAME O TECNICO"),
        ("INVALID REQUEST", "CALL TECHNICIAN"),
    ),
}

# Advice that replaces a sale's screen while the sale goes on: after a CANCEL the daemon
# cannot carry out itself, or when a create stays unresolved.
_NOTICES: dict[Notice, _Entry] = {
    Notice.CANCEL_ON_TERMINAL: (
        WARN,
        ("CANCELE EN LA", "TERMINAL", "EL CLIENTE YA ESTA", "PAGANDO"),
        ("CANCELE NO", "TERMINAL", "O CLIENTE JA ESTA", "PAGANDO"),
        ("CANCEL ON THE", "TERMINAL", "THE CUSTOMER IS", "ALREADY PAYING"),
    ),
    Notice.CANCEL_TOO_LATE: (
        WARN,
        ("NO SE PUEDE CANCELAR", "HAGA UNA DEVOLUCION"),
        ("NAO PODE CANCELAR", "FACA UM ESTORNO"),
        ("TOO LATE TO CANCEL", "REFUND INSTEAD"),
    ),
    # Not cancel advice: the daemon could not learn whether its create reached Mercado Pago.
    Notice.CREATE_UNRESOLVED: (
        ERROR,
        ("ENVIO SIN CONFIRMAR", "LLAME AL SUPERVISOR", "NO REPITA EL COBRO"),
        ("ENVIO NAO CONFIRMADO", "CHAME O SUPERVISOR", "NAO REPITA COBRANCA"),
        ("REQUEST UNCONFIRMED", "CALL SUPERVISOR", "DO NOT CHARGE AGAIN"),
    ),
}

_CONDITIONS: dict[LaneCondition, _Entry] = {
    LaneCondition.READY: (
        INFO,
        ("PAGO CON TARJETA", "DISPONIBLE"),
        ("PAGAMENTO CARTAO", "DISPONIVEL"),
        ("CARD PAYMENTS", "READY"),
    ),
    LaneCondition.CARD_PAYMENTS_UNAVAILABLE: (
        ERROR,
        ("PAGO CON TARJETA", "NO DISPONIBLE"),
        ("PAGAMENTO CARTAO", "INDISPONIVEL"),
        ("CARD PAYMENTS", "UNAVAILABLE"),
    ),
    LaneCondition.TERMINAL_NOT_CONNECTED: (
        ERROR,
        ("TERMINAL DESCONECT.", "REVISE EL CABLE"),
        ("TERMINAL DESCONECT.", "VERIFIQUE O CABO"),
        ("TERMINAL UNPLUGGED", "CHECK THE CABLE"),
    ),
    LaneCondition.TERMINAL_NOT_PDV: (
        ERROR,
        ("TERMINAL SIN MODO", "INTEGRADO (PDV)", "LLAME AL TECNICO"),
        ("TERMINAL SEM MODO", "INTEGRADO (PDV)", "CHAME O TECNICO"),
        ("TERMINAL NOT IN", "PDV MODE", "CALL TECHNICIAN"),
    ),
    LaneCondition.TERMINAL_UNKNOWN: (
        ERROR,
        ("TERMINAL NO ASIGNADA", "LLAME AL TECNICO"),
        ("TERMINAL NAO CONFIG.", "CHAME O TECNICO"),
        ("NO TERMINAL SET UP", "CALL TECHNICIAN"),
    ),
}


_REFUNDS: dict[RefundScreen, _Entry] = {
    RefundScreen.PROCESSING: (
        INFO,
        ("DEVOLUCION", "PROCESANDO..."),
        ("ESTORNO", "PROCESSANDO..."),
        ("REFUND", "PROCESSING..."),
    ),
    RefundScreen.CHECKING: (
        WARN,
        ("VERIFICANDO", "DEVOLUCION", "NO LA REPITA"),
        ("VERIFICANDO", "ESTORNO", "NAO REPITA"),
        ("CHECKING REFUND", "PLEASE WAIT", "DO NOT REPEAT IT"),
    ),
    RefundScreen.ON_TERMINAL: (
        INFO,
        ("DEVOLUCION EN", "LA TERMINAL", "CONFIRME EN EQUIPO"),
        ("ESTORNO NO", "TERMINAL", "CONFIRME NO APARELHO"),
        ("REFUND ON", "THE TERMINAL", "COMPLETE IT THERE"),
    ),
    RefundScreen.DONE: (
        INFO,
        ("DEVOLUCION", "REALIZADA"),
        ("ESTORNO", "REALIZADO"),
        ("REFUND DONE", "MONEY RETURNED"),
    ),
    RefundScreen.FAILED: (
        ERROR,
        ("DEVOLUCION FALLIDA", "NO SE DEVOLVIO NADA"),
        ("ESTORNO FALHOU", "NADA FOI ESTORNADO"),
        ("REFUND FAILED", "NOTHING REFUNDED"),
    ),
    RefundScreen.OVER_AMOUNT: (
        ERROR,
        ("DEVOLUCION RECHAZ.", "MAYOR QUE LO PAGADO"),
        ("ESTORNO RECUSADO", "MAIOR QUE O PAGO"),
        ("REFUND REFUSED", "MORE THAN PAID"),
    ),
    RefundScreen.NOTHING_LEFT: (
        WARN,
        ("DEVOLUCION RECHAZ.", "YA FUE DEVUELTO"),
        ("ESTORNO RECUSADO", "JA FOI ESTORNADO"),
        ("REFUND REFUSED", "ALREADY REFUNDED"),
    ),
    RefundScreen.NOT_REFUNDABLE: (
        ERROR,
        ("DEVOLUCION RECHAZ.", "VENTA SIN PAGO", "CONFIRMADO"),
        ("ESTORNO RECUSADO", "VENDA SEM PAGAMENTO", "CONFIRMADO"),
        ("REFUND REFUSED", "SALE HAS NO", "VERIFIED PAYMENT"),
    ),
    RefundScreen.INVALID_AMOUNT: (
        ERROR,
        ("DEVOLUCION RECHAZ.", "MONTO INVALIDO"),
        ("ESTORNO RECUSADO", "VALOR INVALIDO"),
        ("REFUND REFUSED", "INVALID AMOUNT"),
    ),
}


def prompt_for(subject: Subject, language: str) -> Prompt:
    """The prompt for a state, refusal, notice or lane condition; KeyError for a bad language."""
    if language not in LANGUAGES:
        raise KeyError(f"no prompts in language {language!r}; have {', '.join(LANGUAGES)}")
    if isinstance(subject, SaleState):
        entry = _STATES[subject]
    elif isinstance(subject, Refusal):
        entry = _REFUSALS[subject]
    elif isinstance(subject, Notice):
        entry = _NOTICES[subject]
    elif isinstance(subject, RefundScreen):
        entry = _REFUNDS[subject]
    else:
        entry = _CONDITIONS[subject]
    severity, *texts = entry
    return Prompt(texts[LANGUAGES.index(language)], severity)


def catalogue_subjects() -> list[Subject]:
    """Every subject the catalogue has prompts for."""
    return [*_STATES, *_REFUSALS, *_NOTICES, *_CONDITIONS, *_REFUNDS]
