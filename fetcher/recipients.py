"""Multidrop: which local users a message from a mailbox shared by many (a whole domain's
catch-all) is for. Pure: the header comes in, the decision goes out; DNS look-ups are a
function handed in, and the caller runs them with a timeout.

fetchmail's order (transact.c, readheaders() and find_server_names()):

1. the `envelope` header: the first field of that name after `envskip` of them, every address
   in it (`no envelope` skips this step and the next);
2. with the default envelope, `Received`: the first Received field (after `envskip`) whose
   `by HOST` is the mail server and which has a `for <address>` clause (sendmail, Postfix and
   Exim write one when a message has a single recipient);
3. otherwise guessing from the header: Resent-To, Resent-Cc and Resent-Bcc if there are any,
   else To, Cc, Bcc and Apparently-To.

Each address found is then, in turn:

- stripped of the `qvirtual` prefix (qmail's virtual domains);
- matched whole (`"alice@example.org" = alice` in the rcfile), case folded;
- passed through whole when its domain is a `localdomains` entry or a subdomain of one;
- dropped (counted as rejected) unless its domain is the server's: the poll name, `via`, an
  `aka` (or a subdomain of one) or, with `dns`, a name DNS gives the server's canonical name
  (`checkalias`: one of its addresses);
- its local part mapped through the `is`/`to` list, case folded (`hurkle = happy`); with `*`
  a local part no entry names passes through as it is.

An address without a domain is not looked at, except in the fields `rewrite` qualifies with the
server's name (To, Cc, ...), where it is the server's. No local recipient at all means the
postmaster's (the caller's decision), with fetchmail's X-Fetchmail-Warning.

Where this differs from fetchmail on purpose: addresses are read with an RFC 5322 parser
(`email.headerregistry`), so group syntax (`Team: a@x, b@x;`), quoted local parts
(`"john doe"@x`), comments and encoded words in display names route like any address, where
fetchmail's tokenizer glues a group's name to its first member and keeps the quotes, and sends
such mail to the postmaster. Recipients are collapsed (case folded), so nobody gets a message
twice because two fields name them. The poll name counts as the server's even with `via`.
DNS asks for the name's addresses and canonical name only, not its MX records.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.headerregistry import Address, AddressHeader, HeaderRegistry
from email.utils import getaddresses
from typing import TYPE_CHECKING, NamedTuple, cast

if TYPE_CHECKING:
    from fetcher.message import HeaderField, RawHeader
    from fetcher.model import LocalName, ServerOptions, UserOptions

__all__ = [
    "MAX_ADDRESSES",
    "MAX_LOOKUPS",
    "HostInfo",
    "LookupFailed",
    "ParsedAddress",
    "Resolve",
    "Route",
    "Routing",
    "Source",
    "parse_addresses",
    "received_for",
    "route",
]

# Addresses read from one message: a header of a megabyte can name tens of thousands, and
# no real message is for more than this many people. The rest name nobody.
MAX_ADDRESSES = 1000

# Names one message may make us look up in DNS. Every address in a header can name a domain of
# its own, and each look-up may wait for its timeout: a message with a thousand domains would
# hold the poll for hours. Past this many, a name is not looked up and is not the server's.
MAX_LOOKUPS = 16


class Source(enum.Enum):
    """Where the recipients were found."""

    ENVELOPE = "envelope"  # the `envelope` header
    RECEIVED = "received"  # the `for` clause of the server's own Received line
    RESENT = "resent"  # Resent-To, Resent-Cc, Resent-Bcc
    HEADERS = "headers"  # To, Cc, Bcc, Apparently-To


class HostInfo(NamedTuple):
    """What DNS says of a name: its canonical name and its addresses."""

    canonical: str
    addresses: frozenset[str]


class LookupFailed(Exception):
    """The name server did not answer (or not in time): nothing can be said about the name.
    fetchmail then keeps the message for the next poll rather than guess."""


# A name -> what DNS says of it, None when the name does not exist; raises LookupFailed.
Resolve = Callable[[str], HostInfo | None]


@dataclass(frozen=True)
class Routing:
    """The options of an account that decide its routing."""

    server_names: tuple[str, ...]  # the poll name and `via`: the mail server's own names
    aka: tuple[str, ...] = ()
    localdomains: tuple[str, ...] = ()
    localnames: tuple[LocalName, ...] = ()
    wildcard: bool = False
    envelope: str | None = "Received"  # None: `no envelope`
    envskip: int = 0
    qvirtual: str | None = None
    dns: bool = False
    checkalias: bool = False
    rewrite: bool = True  # unqualified addresses in To, Cc, ... are the server's

    @classmethod
    def of(cls, server: ServerOptions, user: UserOptions) -> Routing:
        names = [server.pollname]
        if server.via is not None:
            names.append(server.via)
        return cls(
            server_names=tuple(names),
            aka=tuple(server.aka),
            localdomains=tuple(server.localdomains),
            localnames=tuple(user.localnames),
            wildcard=user.wildcard,
            envelope=server.envelope,
            envskip=server.envskip,
            qvirtual=server.qvirtual,
            dns=server.dns,
            checkalias=server.checkalias,
            rewrite=user.rewrite,
        )

    @property
    def queryname(self) -> str:
        """The name the server is polled by (`via`, else the poll name)."""
        return self.server_names[-1]


@dataclass(frozen=True)
class Route:
    """The routing of one message."""

    recipients: tuple[str, ...]  # local names, and whole addresses in a `localdomains` domain
    source: Source | None  # None: no header named anyone
    rejected: tuple[str, ...] = ()  # addresses whose domain is not the server's
    dns_errors: tuple[tuple[str, str], ...] = ()  # (name, why) of failed look-ups: it waits
    notes: tuple[str, ...] = ()  # what was decided, in fetchmail's -vv words

    @property
    def unmatched(self) -> bool:
        """No local recipient: the message goes to the postmaster."""
        return not self.recipients

    @property
    def warning(self) -> str | None:
        """fetchmail's X-Fetchmail-Warning text for a message nobody here was named in."""
        if self.recipients:
            return None
        if len(self.rejected) == 1:
            return f"recipient address {self.rejected[0]} didn't match any local name"
        return "no recipient addresses matched declared local names"


# -- addresses ------------------------------------------------------------------------------


class ParsedAddress(NamedTuple):
    """One mailbox of an address list."""

    local: str  # as RFC 5321 writes it: quoted if it must be (`"john doe"`)
    domain: str | None  # None for an address without @

    @property
    def text(self) -> str:
        return self.local if self.domain is None else f"{self.local}@{self.domain}"


_REGISTRY = HeaderRegistry()
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_LINE_END = re.compile(r"[\r\n]")


def parse_addresses(value: str, limit: int = MAX_ADDRESSES) -> list[ParsedAddress]:
    """Every mailbox of an address-list field value, group members included, in order; at
    most `limit` of them.

    The value is first cut into mailboxes at the commas and semicolons that are not inside a
    quoted string, a comment or angle brackets, a group's name dropped; then the standard
    library's RFC 5322 parser reads each one (quoted local parts, comments, display names with
    encoded words, obsolete routes), or its older parser one it cannot read. Cutting first
    keeps the work linear in the field's size: the parser takes quadratic time over a long
    list, and a server decides what the header holds. A mailbox no parser can read (a
    thousand nested comments) names nobody. Never raises.
    """
    text = _FOLD.sub("", value)
    text = _LINE_END.sub(" ", text)
    found: list[ParsedAddress] = []
    for chunk in _mailboxes(text):
        if len(found) >= limit:
            break
        parsed = _parse_mailbox(chunk)
        if parsed is not None:
            found.append(parsed)
    return found


# RFC 2047: =?charset?encoding?text?=. Its text should hold no comma, but mailers write
# `=?utf-8?q?Doe,_John?=` all the same.
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[A-Za-z]\?[^?\s]*\?=")


def _mailboxes(text: str) -> Iterator[str]:
    """The mailboxes of an address list, as text: cut at top-level `,` and `;`, with a group's
    `name:` dropped."""
    start = depth = 0
    quoted = angle = False
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if quoted or depth:
            if c == "\\":
                i += 1
            elif quoted and c == '"':
                quoted = False
            elif depth and c == "(":
                depth += 1
            elif depth and c == ")":
                depth -= 1
        elif c == '"':
            quoted = True
        elif c == "(":
            depth = 1
        elif c == "=" and (word := _ENCODED_WORD.match(text, i)) is not None:
            i = word.end()  # an encoded word is one word, whatever commas its text holds
            continue
        elif angle:
            angle = c != ">"
        elif c == "<":
            angle = True
        elif c in ",;":
            yield text[start:i]
            start = i + 1
        elif c == ":":
            start = i + 1  # what came before was a group's name
        i += 1
    yield text[start:]


def _parse_mailbox(chunk: str) -> ParsedAddress | None:
    chunk = chunk.strip()
    if not chunk or len(chunk) > _MAX_MAILBOX or chunk.count("(") > _MAX_COMMENTS:
        return None  # no mailbox looks like that; the parsers would recurse or crawl
    try:
        header = cast(AddressHeader, _REGISTRY("to", chunk))
        mailboxes = [mailbox for group in header.groups for mailbox in group.addresses]
    except (HeaderParseError, ValueError, TypeError, IndexError, AttributeError, RecursionError):
        return _simple_parse(chunk)
    for mailbox in mailboxes:
        return _from_address(mailbox)
    return None


# A mailbox longer than this, or with more comments, is not read (RFC 5321 caps an address at
# 256 octets; display names and comments make a mailbox longer, not this long).
_MAX_MAILBOX = 2000
_MAX_COMMENTS = 20


def _from_address(mailbox: Address) -> ParsedAddress | None:
    spec = mailbox.addr_spec
    if not spec or spec == "<>":
        return None
    if mailbox.domain:
        local, _, domain = spec.rpartition("@")
        return ParsedAddress(local, domain)
    return ParsedAddress(spec, None)


def _simple_parse(chunk: str) -> ParsedAddress | None:
    try:
        pairs = getaddresses([chunk])
    except (ValueError, TypeError, IndexError, RecursionError):
        return None
    for _name, spec in pairs:
        spec = spec.strip()
        if not spec:
            continue
        local, at, domain = spec.rpartition("@")
        if at and local and domain:
            return ParsedAddress(local, domain)
        return ParsedAddress(spec, None)
    return None


def _unquoted(local: str) -> str:
    """A local part as the mailbox's owner names it: `"john doe"` is `john doe`."""
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        return re.sub(r"\\(.)", r"\1", local[1:-1])
    return local


# -- the Received line ----------------------------------------------------------------------

_BY = re.compile(r"(?<=\s)by(?=\s)")
_FOR = re.compile(r"(?<=\s)for(?=\s)")
_TOKEN = re.compile(r"\s*(\S*)")


def received_for(line: str, is_server: Callable[[str], bool]) -> str | None:
    """The address of a Received line's `for` clause, if the line is the mail server's own:
    fetchmail's parse_received().

    The first blank-surrounded `by` followed by a host name (a word without @) must name the
    server (`is_server`), else the line says nothing. Then the first blank-surrounded `for`
    followed by a word with @ gives the address: in angle brackets or up to the next blank or
    `;`, source route dropped. A blank inside the brackets, or nothing there, gives None.
    """
    host = None
    position = 0
    while (by := _BY.search(line, position)) is not None:
        token = _TOKEN.match(line, by.end())
        assert token is not None  # \s*\S* matches anywhere
        if "@" not in token.group(1):
            host, position = token.group(1), token.end()
            break
        position = token.end()
    if host is None or not is_server(host):
        return None
    while (found := _FOR.search(line, position)) is not None:
        token = _TOKEN.match(line, found.end())
        assert token is not None
        if "@" in token.group(1):
            return _for_address(line, found.end())
        position = token.end()
    return None


def _for_address(line: str, start: int) -> str | None:
    i, n = start, len(line)
    while i < n and line[i].isspace():
        i += 1
    want_gt = i < n and line[i] == "<"
    if want_gt:
        i += 1
    while i < n and line[i] == "@":  # a source route, `<@relay:user@host>`
        colon = line.find(":", i)
        i = n if colon == -1 else colon + 1
    address: list[str] = []
    while i < n and line[i] != ";" and (line[i] != ">" if want_gt else not line[i].isspace()):
        if line[i].isspace():
            return None  # a blank inside the brackets: not an address
        address.append(line[i])
        i += 1
    return "".join(address) or None


# -- routing --------------------------------------------------------------------------------

# The fields `rewrite` qualifies with the server's name (fetchmail's reply_hack(); the same list
# as fetcher.message.REWRITTEN_FIELDS, which a test holds this to).
REWRITTEN = frozenset(
    {
        b"from", b"to", b"reply-to", b"return-path", b"cc", b"bcc",
        b"resent-from", b"resent-to", b"resent-cc", b"resent-bcc",
        b"apparently-from", b"apparently-to", b"sender", b"resent-sender",
    }
)  # fmt: skip
_TO_FIELDS = frozenset({b"to", b"cc", b"bcc", b"apparently-to"})
_RESENT_FIELDS = frozenset({b"resent-to", b"resent-cc", b"resent-bcc"})


def _text(raw: bytes) -> str:
    # Mail headers should be ASCII; an 8-bit byte stays itself (latin-1 maps bytes one to one)
    # so that it can neither break the parser nor make two different addresses equal.
    return raw.decode("latin-1")


@dataclass
class _Router:
    routing: Routing
    resolve: Resolve | None
    accepted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    dns_errors: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _aliases: dict[str, bool] = field(default_factory=dict)
    _folded: set[str] = field(default_factory=set)  # the accepted names, case folded
    _lookups: int = 0
    _server: HostInfo | bool | None = False  # False: not looked up yet

    # -- is a host name the mail server? --------------------------------------------------

    def is_server(self, name: str) -> bool:
        """fetchmail's is_host_alias(): the server's own names, an `aka` or a subdomain of one,
        then (with `dns`) what DNS says. A failed look-up is noted; the message will wait."""
        key = name.lower()
        known = self._aliases.get(key)
        if known is None:
            known = self._is_server(key)
            self._aliases[key] = known
        return known

    def _is_server(self, name: str) -> bool:
        routing = self.routing
        if name in (n.lower() for n in routing.server_names):
            return True
        for aka in routing.aka:
            aka = aka.lower()
            if name == aka or name.endswith("." + aka):
                return True
        if not routing.dns or self.resolve is None or not name:
            return False
        info = self._lookup(name)
        if info is None:
            return False  # no such name (fetchmail would ask for MX records next)
        server = self._server_info()
        canonical = {n.lower() for n in routing.server_names}
        if server is not None:
            canonical.add(server.canonical.lower())
        if info.canonical.lower() in canonical:
            return True
        if routing.checkalias and server is not None and info.addresses & server.addresses:
            self.notes.append(f"Yes, the IP addresses of {name} and the server match")
            return True
        return False

    def _server_info(self) -> HostInfo | None:
        if self._server is False:
            self._server = self._lookup(self.routing.queryname.lower())
        return self._server if isinstance(self._server, HostInfo) else None

    def _lookup(self, name: str) -> HostInfo | None:
        assert self.resolve is not None
        if self._lookups >= MAX_LOOKUPS:
            self.notes.append(f"not looking up {name}: too many names in one message")
            return None
        self._lookups += 1
        try:
            return self.resolve(name)
        except LookupFailed as err:
            self.dns_errors.append((name, str(err)))
            return None

    # -- one address -------------------------------------------------------------------------

    def take(self, address: ParsedAddress, qualify: bool) -> None:
        """find_server_names() for one address."""
        routing = self.routing
        text = address.text
        if routing.qvirtual and text.lower().startswith(routing.qvirtual.lower()):
            text = text[len(routing.qvirtual) :]
        local, at, domain = text.rpartition("@")
        if not at:
            if not qualify or not text:
                return  # an address without a domain names nobody (fetchmail: no @, skipped)
            local, domain = text, routing.queryname
            text = f"{local}@{domain}"
        if not local or not domain:
            return
        whole = self._mapped(text)
        if whole is not None:
            self.notes.append(f"mapped address {text} to local {whole}")
            self._accept(whole)
            return
        lowered = domain.lower()
        for entry in routing.localdomains:
            entry = entry.lower()
            if lowered == entry or lowered.endswith("." + entry):
                self.notes.append(f"passed through {text} matching {entry}")
                self._accept(text)
                return
        if not self.is_server(domain):
            self.rejected.append(text)
            return
        name = self._mapped(_unquoted(local))
        if name is None and routing.wildcard:
            name = local
        if name is not None:
            self.notes.append(f"mapped {local} to local {name}")
            self._accept(name)

    def _mapped(self, name: str) -> str | None:
        """idpair_find(): the local name an `is`/`to` entry gives `name`, case folded."""
        folded = name.casefold()
        for remote, local in self.routing.localnames:
            if remote.casefold() == folded:
                return local if local is not None else remote
        return None

    def _accept(self, name: str) -> None:
        folded = name.casefold()
        if folded not in self._folded:
            self._folded.add(folded)
            self.accepted.append(name)


def route(header: RawHeader, routing: Routing, resolve: Resolve | None = None) -> Route:
    """The local recipients of a multidrop message, and where they were found."""
    router = _Router(routing, resolve)
    source, fields = _recipient_fields(header, routing, router)
    left = MAX_ADDRESSES
    for name, value in fields:
        qualify = routing.rewrite and name in REWRITTEN
        addresses = parse_addresses(value, left)
        for address in addresses:
            router.take(address, qualify)
        left -= len(addresses)
        if left <= 0:
            router.notes.append(f"only the first {MAX_ADDRESSES} addresses were read")
            break
    return Route(
        recipients=tuple(router.accepted),
        source=source,
        rejected=tuple(router.rejected),
        dns_errors=tuple(router.dns_errors),
        notes=tuple(router.notes),
    )


def _recipient_fields(
    header: RawHeader, routing: Routing, router: _Router
) -> tuple[Source | None, Sequence[tuple[bytes | None, str]]]:
    """Where the recipients are, in fetchmail's order, as (field name, value) pairs."""
    envelope = routing.envelope
    if envelope is not None:
        wanted = envelope.strip().rstrip(":").strip().lower().encode("latin-1", "replace")
        if wanted == b"received":
            for line in _after_skip(header.all(b"received"), routing.envskip):
                found = received_for(_text(line.raw), router.is_server)
                if found is not None:
                    router.notes.append(f"found Received address `{found}'")
                    return Source.RECEIVED, [(None, found)]
        else:
            fields = _after_skip(header.all(wanted), routing.envskip)
            if fields:
                return Source.ENVELOPE, [(wanted, _text(fields[0].value))]
    resent = _named(header, _RESENT_FIELDS)
    if resent:
        return Source.RESENT, resent
    guessed = _named(header, _TO_FIELDS)
    return (Source.HEADERS, guessed) if guessed else (None, [])


def _after_skip(fields: Sequence[HeaderField], skip: int) -> list[HeaderField]:
    return list(fields[max(skip, 0) :])


def _named(header: RawHeader, names: Iterable[bytes]) -> list[tuple[bytes | None, str]]:
    wanted = frozenset(names)
    return [(f.name, _text(f.value)) for f in header.fields if f.name in wanted]
