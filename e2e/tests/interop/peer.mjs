// The interop peer on clients/js/src/e2e.js (WebCrypto): the same request and answer
// as peer.py, for e2e/tests/interop.rs.
import * as e2e from '../../../clients/js/src/e2e.js';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString('utf8'));

const inbox = new e2e.Inbox(await e2e.importPrivateJwk(request.me));
const opened = [];
for (const { topic, jwe } of request.envelopes) {
  try {
    const got = await inbox.open(topic, null, jwe, 'history');
    const plaintext = got.kind === 'room-key' ? JSON.stringify(got.key) : e2e.utf8(got.plaintext);
    opened.push({ ok: true, kind: got.binding.kind, plaintext });
  } catch (e) {
    if (!(e instanceof e2e.OpenError)) throw e;
    opened.push({ ok: false, code: e.code });
  }
}
const to = [request.recipient];
const roomKey = e2e.createRoomKey('js/room', 1);
const made = {
  sealed: await e2e.seal('sealed by javascript ✓', to, { topic: 'js/dm', from: 'javascript' }),
  room_key: await e2e.shareRoomKey(roomKey, to, 'js/keys', 'javascript'),
  room: await e2e.roomEncrypt(roomKey, 'js/room', 'javascript', 'room message from javascript'),
  room_key_value: roomKey,
};
process.stdout.write(JSON.stringify({ opened, made }));
