import { h } from './dom.js';

export default {
  id: 'channels',
  title: 'Channels',
  render(ctx, el) {
    el.append(h('p', {}, 'Coming soon.'));
  },
};
