// Where the page's room, link token and display name come from, and where
// they are remembered (localStorage, one key per room for the token).

const NAME_KEY = "replroom:name";
/** The member key's place; index.html's early join reads (and makes) it too. */
const MEMBER_KEY = "replroom:key";
const tokenKey = (roomId: string) => `replroom:token:${roomId}`;

export interface Session {
  roomId: string;
  token: string | null;
}

/** The room id from the path (/r/{id}) and the token from the fragment (#t=…) or storage. */
export function readSession(location: Location): Session {
  const match = /^\/r\/([^/]+)\/?$/.exec(location.pathname);
  const roomId = match ? decodeURIComponent(match[1]) : "";
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = fragment.get("t") || (roomId ? load(tokenKey(roomId)) : null);
  return { roomId, token };
}

/** Remember the token that worked, and keep an owner's token out of the address bar. */
export function rememberToken(roomId: string, token: string, role: string): void {
  save(tokenKey(roomId), token);
  if (role === "owner" && location.hash) {
    // Whoever sees the address bar (a screen share, a copied URL) must not get
    // the owner's powers: show the bare room URL; a reload reads the token back.
    history.replaceState(history.state, "", `/r/${encodeURIComponent(roomId)}`);
  }
}

/** The token the room's page remembered (the replay page, /r/{id}/replay, reads it too). */
export function storedToken(roomId: string): string | null {
  return load(tokenKey(roomId));
}

export function forgetToken(roomId: string): void {
  try {
    localStorage.removeItem(tokenKey(roomId));
  } catch {
    // storage disabled: nothing was kept
  }
}

export function storedName(): string | null {
  return load(NAME_KEY)?.trim().slice(0, 40) || null;
}

export function storeName(name: string): void {
  save(NAME_KEY, name);
}

let memberKeyCache: string | null = null;

/**
 * This browser's member key: 16 random bytes (base64url), made once and kept in
 * localStorage, so that what the owners decide about this member (read-only,
 * co-owner, removed) holds across reconnects and reloads. Without storage it
 * lasts as long as the page.
 */
export function memberKey(): string {
  if (memberKeyCache) return memberKeyCache;
  const stored = load(MEMBER_KEY);
  if (stored && /^[A-Za-z0-9_-]{22,200}$/.test(stored)) {
    memberKeyCache = stored;
    return stored;
  }
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  const made = btoa(String.fromCharCode(...bytes))
    .replace(/\+/g, "-")
    .replace(/\//g, "_")
    .replace(/=+$/, "");
  save(MEMBER_KEY, made);
  memberKeyCache = made;
  return made;
}

export function defaultName(): string {
  return `Guest ${100 + Math.floor(Math.random() * 900)}`;
}

/** A link that joins this room with the given token. */
export function linkFor(roomId: string, token: string): string {
  return `${location.origin}/r/${encodeURIComponent(roomId)}#t=${token}`;
}

function load(key: string): string | null {
  try {
    return localStorage.getItem(key);
  } catch {
    return null;
  }
}

function save(key: string, value: string): void {
  try {
    localStorage.setItem(key, value);
  } catch {
    // storage disabled (private mode): the page still works for this visit
  }
}
