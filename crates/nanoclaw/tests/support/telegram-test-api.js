// Starts the third-party Telegram Bot API emulator `telegram-test-api` (npm) on
// 127.0.0.1:<port> for tests/telegram.rs. Installed under .tools/node by
// scripts/test-tools.sh; NODE_PATH points there.
const TelegramServer = require('telegram-test-api');

const port = Number(process.argv[2]);
const server = new TelegramServer({ port, host: '127.0.0.1', storeTimeout: 600 });
server.start().then(
  () => console.log(`telegram-test-api listening on ${port}`),
  (e) => {
    console.error(`telegram-test-api failed to start: ${e}`);
    process.exit(1);
  },
);
process.on('SIGTERM', () => server.stop().then(() => process.exit(0)));
