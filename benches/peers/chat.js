// A minimal Node.js chat relay like the seed's, kept as a benchmark peer:
// every line a client sends goes to every other client as "<name> line".
// Like the seed it buffers without bound for clients that stop reading
// (socket.write queues in user space and never pushes back), and it keeps
// Node's socket defaults (Nagle on), as such a seed does.
// Usage: node chat.js [PORT] [HOST]   (port 0: the kernel picks; printed)
'use strict';
const net = require('net');

const port = Number(process.argv[2] || 0);
const host = process.argv[3] || '127.0.0.1';
const clients = new Set();
let seq = 0;

const server = net.createServer((sock) => {
  const name = `user${++seq}`;
  let partial = '';
  clients.add(sock);
  sock.write(`welcome, ${name}\n`);
  sock.on('data', (chunk) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop();
    for (const line of lines) {
      const out = `<${name}> ${line}\n`;
      for (const c of clients) if (c !== sock) c.write(out);
    }
  });
  sock.on('close', () => clients.delete(sock));
  sock.on('error', () => {});
});
server.maxConnections = 100000;
server.listen({ port, host, backlog: 4096 }, () => {
  console.log(`listening on ${host}:${server.address().port}`);
});
