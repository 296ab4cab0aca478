// The REST calls of the npm package easemob-websdk's presence API (publish, subscribe, get,
// sublist, unsubscribe), made by the package's own functions with their own request code, as a
// logged-in connection would make them. Run by tests/sdk.rs against the emulator directly and
// through imgate. A browser's globals are stood in for: `window.WebSocket` (the package checks
// for it to pick its browser code path) and `XMLHttpRequest` (from the npm package xhr2).
//
// Usage: node websdk_presence.js BASE_URL ORG APP TOKEN USER OTHER
// Prints one JSON object: each call's answer (or error status and body).

globalThis.self = globalThis;
globalThis.window = globalThis;
globalThis.WebSocket = globalThis.WebSocket || function WebSocket() {};
globalThis.XMLHttpRequest = require('xhr2');
require('easemob-websdk/miniCore/miniCore.js');
const presence = require('easemob-websdk/presence/presence.js');

const [base, org, app, token, user, other] = process.argv.slice(2);
const connection = {
  apiUrl: base,
  _initWithAppId: false,
  context: {
    orgName: org,
    appName: app,
    userId: user,
    accessToken: token,
    jid: { clientResource: 'web_sdk_test' },
  },
};

async function call(name, params) {
  try {
    const answer = await presence[name].call(connection, params);
    const body = answer === undefined ? null : answer;
    if (body && typeof body === 'object') delete body.extraInfo;
    return { ok: true, body };
  } catch (err) {
    const xhr = err && err.xhr;
    return {
      ok: false,
      status: xhr ? xhr.status : null,
      body: xhr ? xhr.responseText : String(err && (err.message || err.type)),
    };
  }
}

(async () => {
  const report = {};
  report.publish = await call('publishPresence', { description: 'music' });
  report.subscribe = await call('subscribePresence', { usernames: [other], expiry: 3600 });
  report.get = await call('getPresenceStatus', { usernames: [other, user] });
  report.sublist = await call('getSubscribedPresencelist', { pageNum: 1, pageSize: 20 });
  report.unsubscribe = await call('unsubscribePresence', { usernames: [other] });
  report.sublist_after = await call('getSubscribedPresencelist', { pageNum: 1, pageSize: 20 });
  process.stdout.write(JSON.stringify(report) + '\n');
})();
