// A socket.io v4 chat, kept as a benchmark peer for chatd's web port and
// cluster mode: every "chat" event a client emits goes to every other
// member of the room as "<name> text" (socket.to(room).emit), as the
// socket.io chat example does. With REDIS_URL set it uses the Redis
// adapter (@socket.io/redis-adapter), so several instances behind a load
// balancer share the room, as in socket.io's "using multiple nodes" guide.
//
// Transport: websocket only (clients open /socket.io/?EIO=4&transport=websocket
// directly, no HTTP long-polling first), so a balancer needs no sticky
// sessions: every request of a session is the one upgrade request.
// Usage: [REDIS_URL=redis://127.0.0.1:6379] node sio-chat.js [PORT] [HOST]
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2] || 0);
const host = process.argv[3] || '127.0.0.1';
const room = 'lobby';
let seq = 0;

async function main() {
  const server = http.createServer();
  const io = new Server(server, { transports: ['websocket'], serveClient: false });
  if (process.env.REDIS_URL) {
    const { createClient } = require('redis');
    const { createAdapter } = require('@socket.io/redis-adapter');
    const pub = createClient({ url: process.env.REDIS_URL });
    const sub = pub.duplicate();
    pub.on('error', (e) => console.error(`redis: ${e.message}`));
    sub.on('error', (e) => console.error(`redis: ${e.message}`));
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  io.on('connection', (socket) => {
    const name = `user${process.pid}-${++seq}`;
    socket.join(room);
    socket.on('chat', (text) => {
      if (typeof text !== 'string') return;
      socket.to(room).emit('chat', `<${name}> ${text}`);
    });
  });
  server.listen({ port, host, backlog: 4096 }, () => {
    console.log(`listening on ${host}:${server.address().port}`);
  });
}
main().catch((e) => {
  console.error(e);
  process.exit(1);
});
