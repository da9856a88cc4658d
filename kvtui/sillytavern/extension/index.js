// kvtui companion extension for SillyTavern (1.19): tells kvtui's proxy exactly which chat,
// character and generation type each request is for, and when a chat is opened or edited.
//
// - Text Completion: adds a `kvtui` object to the request body (SillyTavern's server forwards
//   llama.cpp bodies unfiltered).
// - Chat Completion (Custom source): SillyTavern's server rebuilds the body from a fixed list of
//   keys, so the object travels in `custom_include_body` (merged into the upstream body by the
//   server), next to whatever the user put there.
// - Chat events go from this page straight to the proxy's /kvtui/v1/event as a CORS "simple"
//   request (text/plain body): it reaches the proxy even when the proxy sends no CORS headers.
// Everything fails silently when no kvtui proxy is listening.

const MODULE = 'kvtui';
const VERSION = 1;
const TYPES = new Set(['normal', 'swipe', 'regenerate', 'continue', 'quiet', 'impersonate']);
const STATUS_EVERY_MS = 20000;
const DEFAULTS = Object.freeze({ enabled: true, proxy_url: '' });

/** The type SillyTavern's last GENERATION_STARTED announced; consumed by the next request. */
let pendingType = null;
let statusTimer = null;
let connected = false;
let idleTicks = 0;

function ctx() {
    return SillyTavern.getContext();
}

function settings() {
    const all = ctx().extensionSettings;
    if (!all[MODULE]) {
        all[MODULE] = { ...DEFAULTS };
    }
    for (const [key, value] of Object.entries(DEFAULTS)) {
        if (all[MODULE][key] === undefined) {
            all[MODULE][key] = value;
        }
    }
    return all[MODULE];
}

function trimUrl(url) {
    return String(url || '').trim().replace(/\/+$/, '').replace(/\/v1$/, '').replace(/\/+$/, '');
}

/** The proxy's base URL: the user's override, else the API URL SillyTavern is using. */
function proxyUrl() {
    const own = trimUrl(settings().proxy_url);
    if (own) {
        return own;
    }
    const c = ctx();
    if (c.mainApi === 'textgenerationwebui') {
        const tc = c.textCompletionSettings || {};
        return trimUrl(tc.server_urls?.[tc.type]);
    }
    if (c.mainApi === 'openai' && c.chatCompletionSettings?.chat_completion_source === 'custom') {
        return trimUrl(c.chatCompletionSettings.custom_url);
    }
    return '';
}

function hashText(text) {
    const sha256 = SillyTavern.libs?.sha256;
    if (typeof sha256 === 'function') {
        return sha256(String(text));
    }
    return null;
}

/** The last user message of the open chat: its index and the SHA-256 (hex) of its text. */
function lastUserMessage() {
    const chat = ctx().chat || [];
    for (let i = chat.length - 1; i >= 0; i--) {
        if (chat[i]?.is_user && !chat[i]?.is_system) {
            const hash = hashText(chat[i].mes ?? '');
            return hash === null ? null : { index: i, hash };
        }
    }
    return null;
}

/** The `kvtui` object of contracts.md for the request about to be sent. */
function identity() {
    const c = ctx();
    const type = pendingType ?? 'quiet'; // generateRaw and friends announce nothing
    pendingType = null;
    const ch = c.characters?.[c.characterId];
    return {
        chat: c.chatId ?? null,
        character: ch?.name ?? c.name2 ?? null,
        avatar: ch?.avatar ?? null,
        group: c.groupId ?? null,
        type: TYPES.has(type) ? type : 'quiet',
        user_message: lastUserMessage(),
        source: 'extension',
        version: VERSION,
    };
}

function onGenerationStarted(type, _options, dryRun) {
    if (dryRun) {
        return;
    }
    pendingType = type || 'normal';
}

function onTextCompletionReady(params) {
    if (!settings().enabled || !params || typeof params !== 'object') {
        return;
    }
    const id = identity();
    if (id.chat) {
        params.kvtui = id;
    }
}

/** Merge {kvtui: …} into the user's custom_include_body (YAML or JSON) without losing theirs. */
function withKvtuiBody(existing, id) {
    const text = String(existing || '').trim();
    if (!text) {
        return JSON.stringify({ kvtui: id });
    }
    const yaml = SillyTavern.libs?.yaml;
    if (!yaml) {
        return null;
    }
    try {
        const parsed = yaml.parse(text);
        if (Array.isArray(parsed)) {
            return JSON.stringify([...parsed, { kvtui: id }]);
        }
        if (parsed && typeof parsed === 'object') {
            return JSON.stringify({ ...parsed, kvtui: id });
        }
    } catch {
        // unparseable: SillyTavern's server ignores it too; leave it untouched
    }
    return null;
}

function onChatCompletionReady(data) {
    if (!settings().enabled || !data || typeof data !== 'object') {
        return;
    }
    const id = identity();
    if (!id.chat || data.chat_completion_source !== 'custom') {
        return;
    }
    const merged = withKvtuiBody(data.custom_include_body, id);
    if (merged !== null) {
        data.custom_include_body = merged;
    }
}

function post(path, body) {
    const base = proxyUrl();
    if (!base || !settings().enabled) {
        return Promise.resolve(null);
    }
    return fetch(`${base}/kvtui/v1/${path}`, {
        method: 'POST',
        // text/plain keeps this a CORS "simple" request: no preflight the proxy must answer.
        headers: { 'Content-Type': 'text/plain;charset=UTF-8' },
        body: JSON.stringify(body),
        keepalive: true,
    }).then(r => (r.ok && r.status !== 204 ? r.json() : null)).catch(() => null);
}

function chatEvent(type, messageIndex = null) {
    const c = ctx();
    if (!c.chatId) {
        return;
    }
    let avatar = null;
    let character = null;
    const message = messageIndex !== null ? c.chat?.[messageIndex] : null;
    if (message && !message.is_user) {
        avatar = message.original_avatar ?? null;
        character = message.name ?? null;
    }
    if (!c.groupId && !avatar) {
        const ch = c.characters?.[c.characterId];
        avatar = ch?.avatar ?? null;
        character = ch?.name ?? null;
    }
    post('event', {
        type,
        chat: c.chatId,
        group: c.groupId ?? null,
        avatar,
        character,
        message_index: messageIndex,
    });
}

// -- the small status panel ------------------------------------------------------------------

function panelHtml() {
    return `
<div id="kvtui_settings" class="kvtui-settings">
  <div class="inline-drawer">
    <div class="inline-drawer-toggle inline-drawer-header">
      <b>kvtui</b>
      <div class="inline-drawer-icon fa-solid fa-circle-chevron-down down"></div>
    </div>
    <div class="inline-drawer-content">
      <label class="checkbox_label" for="kvtui_enabled">
        <input id="kvtui_enabled" type="checkbox" />
        <span>Tell kvtui which chat and character each request is for</span>
      </label>
      <label for="kvtui_proxy_url"><small>kvtui proxy URL (empty: the API URL in use)</small></label>
      <input id="kvtui_proxy_url" class="text_pole" type="text" placeholder="http://127.0.0.1:8081" />
      <div class="kvtui-status"><span id="kvtui_status_dot" class="kvtui-dot"></span>
        <span id="kvtui_status_text">kvtui: not connected</span></div>
      <div class="flex-container">
        <input id="kvtui_tag" class="text_pole flex1" type="text" placeholder="tag (optional)" />
        <div id="kvtui_save" class="menu_button menu_button_icon" title="Save this character's cache now">
          <i class="fa-solid fa-floppy-disk"></i><span>Save</span></div>
      </div>
      <small id="kvtui_save_result" class="kvtui-result"></small>
    </div>
  </div>
</div>`;
}

function setStatus(isConnected, text) {
    connected = isConnected;
    $('#kvtui_status_dot').toggleClass('kvtui-on', isConnected);
    $('#kvtui_status_text').text(text);
}

async function refreshStatus() {
    const base = proxyUrl();
    const c = ctx();
    if (!base || !settings().enabled) {
        setStatus(false, 'kvtui: off');
        return;
    }
    const ch = c.characters?.[c.characterId];
    const query = new URLSearchParams({ chat: c.chatId ?? '', character: ch?.name ?? c.name2 ?? '' });
    try {
        const r = await fetch(`${base}/kvtui/v1/status?${query}`);
        if (!r.ok) {
            throw new Error(String(r.status));
        }
        const s = await r.json();
        const slot = s.slot === null || s.slot === undefined ? 'no slot' : `slot ${s.slot}`;
        const turn = s.last_turn ? ` · last turn ${s.last_turn.cache_n}/${s.last_turn.prompt_n} cached` : '';
        setStatus(Boolean(s.connected), `kvtui: ${s.connected ? 'connected' : 'server down'} · ${slot}${turn}`);
    } catch {
        setStatus(false, 'kvtui: not connected');
    }
}

async function saveNow() {
    const c = ctx();
    const ch = c.characters?.[c.characterId];
    const tag = String($('#kvtui_tag').val() || '').trim() || null;
    $('#kvtui_save_result').text('Saving…');
    const result = await post('save', { chat: c.chatId ?? null, character: ch?.name ?? c.name2 ?? null, tag });
    if (result && result.filename) {
        $('#kvtui_save_result').text(`Saved ${result.n_saved ?? '?'} tokens → ${result.filename}`);
    } else if (result && result.error) {
        $('#kvtui_save_result').text(String(result.error));
    } else {
        $('#kvtui_save_result').text(`No answer from kvtui at ${proxyUrl() || '(no URL)'}: is kvtui proxy running there?`);
    }
    refreshStatus();
}

function mountPanel() {
    const host = $('#extensions_settings2').length ? $('#extensions_settings2') : $('#extensions_settings');
    if (!host.length || $('#kvtui_settings').length) {
        return;
    }
    host.append(panelHtml());
    $('#kvtui_enabled').prop('checked', settings().enabled).on('change', function () {
        settings().enabled = Boolean($(this).prop('checked'));
        ctx().saveSettingsDebounced();
        refreshStatus();
    });
    $('#kvtui_proxy_url').val(settings().proxy_url).on('change', function () {
        settings().proxy_url = String($(this).val() || '').trim();
        ctx().saveSettingsDebounced();
        refreshStatus();
    });
    $('#kvtui_save').on('click', saveNow);
}

// -- wiring ------------------------------------------------------------------------------------

function init() {
    const c = ctx();
    const ev = c.eventTypes;
    const on = (type, fn) => type && c.eventSource.on(type, fn);
    on(ev.GENERATION_STARTED, onGenerationStarted);
    on(ev.TEXT_COMPLETION_SETTINGS_READY, onTextCompletionReady);
    on(ev.CHAT_COMPLETION_SETTINGS_READY, onChatCompletionReady);
    on(ev.CHAT_CHANGED, (chatId) => {
        if (chatId) {
            chatEvent('chat_opened');
        }
        refreshStatus();
    });
    on(ev.MESSAGE_EDITED, (index) => chatEvent('message_edited', Number(index)));
    on(ev.MESSAGE_DELETED, (length) => chatEvent('message_deleted', Number(length)));
    on(ev.MESSAGE_SWIPED, (index) => chatEvent('message_swiped', Number(index)));
    on(ev.GENERATION_ENDED, () => refreshStatus());
    mountPanel();
    refreshStatus();
    // Poll while connected; without a proxy only every third tick (each try is a console line).
    statusTimer = statusTimer ?? setInterval(() => {
        idleTicks = connected ? 0 : idleTicks + 1;
        if (connected || idleTicks % 3 === 0) {
            refreshStatus();
        }
    }, STATUS_EVERY_MS);
}

const ready = ctx().eventTypes.APP_READY;
if (ready) {
    ctx().eventSource.on(ready, init); // APP_READY is sticky: runs at once when already ready
} else {
    jQuery(init);
}
