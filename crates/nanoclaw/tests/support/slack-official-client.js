// Slack's own client libraries (@slack/socket-mode for Socket Mode, @slack/web-api for
// the Web API) against a Slack at argv[2] (SLACK_API_URL), with the tokens in
// SLACK_APP_TOKEN and SLACK_BOT_TOKEN: asks who the bot is, connects, answers "ping"
// with a file and "pong" (acknowledging each envelope), survives a refresh, and reports a mention.
// Each step is a line on stdout, so the test can tell how far the client got; any
// failure exits non-zero.
const { SocketModeClient, LogLevel } = require('@slack/socket-mode');
const { WebClient } = require('@slack/web-api');

const api = `${process.argv[2]}/`;
const web = new WebClient(process.env.SLACK_BOT_TOKEN, { slackApiUrl: api, retryConfig: { retries: 0 } });
const socket = new SocketModeClient({
  appToken: process.env.SLACK_APP_TOKEN,
  clientOptions: { slackApiUrl: api },
  logLevel: LogLevel.ERROR,
});

const fail = (why) => {
  console.log(`FAILED ${why}`);
  process.exit(1);
};
setTimeout(() => fail('timeout'), 30000).unref();

socket.on('connected', () => console.log('CONNECTED'));
socket.on('message', async ({ event, ack, retry_num: retry }) => {
  await ack();
  if (event.bot_id) {
    console.log(`ECHO ${event.text}`);
    return;
  }
  console.log(`MESSAGE ${event.user} ${event.channel_type}: ${event.text} (retry ${retry})`);
  if (event.text === 'ping') {
    try {
      await web.chat.postMessage({ channel: 'C0NOWHERE', text: 'nowhere' });
      fail('an unknown channel was accepted');
    } catch (error) {
      console.log(`REFUSED ${error.code} ${error.data && error.data.error}`);
    }
    const up = await web.filesUploadV2({ channel_id: event.channel, file: Buffer.from('buy milk'), filename: 'notes.txt', initial_comment: 'the list' });
    console.log(`UPLOADED ${up.files.map((f) => f.files.map((x) => x.id).join(',')).join(',')}`);
    const sent = await web.chat.postMessage({ channel: event.channel, text: 'pong & <done>' });
    console.log(`SENT ${sent.ts} ${sent.message.text}`);
  }
});
socket.on('app_mention', async ({ event, ack }) => {
  await ack();
  console.log(`MENTION ${event.text}`);
  await socket.disconnect();
  process.exit(0);
});

(async () => {
  const me = await web.auth.test();
  console.log(`AUTH ${me.user_id} ${me.team}`);
  const info = await web.conversations.info({ channel: 'C0GENERAL1' });
  console.log(`INFO ${info.channel.name}`);
  await socket.start();
})().catch((error) => fail(`starting: ${error}`));
